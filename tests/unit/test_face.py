"""Face tracking and crop geometry on the real demo media (../shared/media)."""

from __future__ import annotations

import logging
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xnemo_pack.xnemo_core.pure import face_crop, face_track
from xnemo_pack.xnemo_core.pure.errors import NoFaceError, XNeMoError

BACKGROUND = 0.2  # grey used for padded canvases


def _read_video(path: Path) -> torch.Tensor:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return torch.from_numpy(np.stack(frames)).float() / 255


def _canvas(frames: torch.Tensor, height: int, width: int, top: int, left: int) -> torch.Tensor:
    out = torch.full((frames.shape[0], height, width, 3), BACKGROUND)
    out[:, top : top + frames.shape[1], left : left + frames.shape[2]] = frames
    return out


def _side(boxes: torch.Tensor) -> torch.Tensor:
    return torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


@pytest.fixture(scope="module")
def video(media_dir: Path) -> torch.Tensor:
    frames = _read_video(media_dir / "driving_video.mp4")
    assert frames.shape == (230, 512, 512, 3)
    return frames


@pytest.fixture(scope="module")
def tracked(video: torch.Tensor):
    """The whole clip tracked and cropped once; also returns the seconds tracking took."""
    calls = []
    start = time.perf_counter()
    track = face_track.track_face(video, progress=lambda done, total: calls.append((done, total)))
    seconds = time.perf_counter() - start
    return track, face_crop.driving_crops(video, track), seconds, calls


def test_every_frame_of_the_demo_clip_is_tracked(tracked):
    track, crops, seconds, calls = tracked
    print(f"\ntracked 230 frames in {seconds:.2f} s ({1000 * seconds / 230:.1f} ms/frame)")
    assert track.found.all(), f"missed frames {track.missing_frames}"
    assert track.boxes.shape == (230, 4)
    # The demo face is ~290 px in a 512 px frame and stays inside it.
    side = _side(track.boxes)
    assert 220 < side.min() and side.max() < 360
    assert (track.boxes[:, :2] >= -1).all() and (track.boxes[:, 2:] <= 513).all()
    # No jumps: the head moves a few pixels per frame at 25 fps.
    steps = torch.diff(face_crop.box_centres(track.boxes), dim=0).norm(dim=1)
    assert steps.max() < 0.1 * side.mean()
    # Progress reaches the total and never goes back.
    assert calls[-1][0] == calls[-1][1] and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_driving_crops_are_square_stable_and_cover_the_face(tracked):
    track, crops, _, _ = tracked
    side = int(crops.crop_boxes[0, 2] - crops.crop_boxes[0, 0])
    assert side % 2 == 0 and abs(side - 1.1 * _side(track.boxes[:1]).item()) <= 2
    sizes = crops.crop_boxes[:, 2:] - crops.crop_boxes[:, :2]
    assert (sizes == side).all()
    assert crops.crops.shape == (230, 3, 224, 224) and crops.crops.dtype == torch.float32
    assert crops.crops.min() >= -1 and crops.crops.max() <= 1
    # Jitter = std of the frame-to-frame centre displacement. BlazeFace's whole-pixel boxes step by ~1 px per frame; the
    # sigma-5 Gaussian leaves the crop centre moving < 0.5 px per frame beyond its trend: half a source pixel, ~0.35 px
    # in the 224 crop, below what the motion encoder can see.
    raw = face_crop.centre_jitter(crops.raw_centres)
    boxes = face_crop.centre_jitter(face_crop.box_centres(crops.crop_boxes))
    print(f"\njitter: raw {raw:.2f} px, smoothed {crops.jitter:.3f} px, whole-pixel crop boxes {boxes:.3f} px")
    assert crops.jitter < 0.5 and crops.jitter < 0.3 * raw
    assert boxes < 1.0
    # The face stays inside its crop (allowing 5 % of the side for smoothing lag).
    margin = 0.05 * side
    assert (track.boxes[:, :2] >= crops.crop_boxes[:, :2] - margin).all()
    assert (track.boxes[:, 2:] <= crops.crop_boxes[:, 2:] + margin).all()


def test_driving_crop_pixels_match_the_frame():
    frames = torch.randint(0, 256, (3, 300, 400, 3)).float() / 255  # decoded video: whole uint8 steps
    boxes = torch.tensor([[100.0, 50.0, 200.0, 150.0]]).repeat(3, 1)
    track = face_track.FaceTrack(boxes=boxes, found=torch.ones(3, dtype=torch.bool))
    crops = face_crop.driving_crops(frames, track, scale=1.1, size=110)
    assert crops.crop_boxes[0].tolist() == [95.0, 45.0, 205.0, 155.0]  # 110 px square on the face centre
    expected = frames[0, 45:155, 95:205].permute(2, 0, 1) * 2 - 1  # 110 px: no resize, the pixels themselves
    assert torch.allclose(crops.crops[0], expected, atol=1e-6)
    assert crops.length == (110, 110) and np.allclose(crops.frame0_box, (95.0, 45.0, 205.0, 155.0))


def test_driving_crop_larger_than_frame_is_centred_and_padded():
    frames = torch.rand(2, 100, 160, 3)
    boxes = torch.tensor([[30.0, 0.0, 150.0, 120.0]]).repeat(2, 1)  # a face box taller than the frame
    track = face_track.FaceTrack(boxes=boxes, found=torch.ones(2, dtype=torch.bool))
    crops = face_crop.driving_crops(frames, track, size=120)
    # 1.1x leaves the frame, so the official keeps the raw 120 px box; 120 > 99 rows: the official would slice out of
    # range, the pack centres it and pads black (departure).
    assert crops.length == (120, 120)
    x0, y0, x1, y1 = crops.crop_boxes[0].tolist()
    assert (y0, y1) == (-10.0, 110.0)  # padded 10 px above and below
    assert (x0, x1) == (30.0, 150.0)  # fits across: kept where the face is
    assert torch.all(crops.crops[0, :, :10] == -1) and torch.all(crops.crops[0, :, -10:] == -1)  # black is -1
    assert torch.allclose(crops.crops[0, :, 10:-10], frames[0, :, 30:150].permute(2, 0, 1) * 2 - 1, atol=1 / 255)


@pytest.mark.parametrize(
    "height,width,top,left", [(512, 896, 0, 384), (896, 512, 200, 0)], ids=["landscape-face-right", "portrait"]
)
def test_padded_clips_track_the_face_where_it_is(video, height, width, top, left):
    clip = video[::10]  # 23 frames 0.4 s apart: still one continuous track
    base = face_track.track_face(clip)
    track = face_track.track_face(_canvas(clip, height, width, top, left))
    assert track.found.all()
    side = _side(base.boxes)
    offset = face_crop.box_centres(track.boxes) - face_crop.box_centres(base.boxes) - torch.tensor([left, top])
    # Same pixels, different canvas: letterboxed whole into BlazeFace's 128 px input the 896 px canvas shows the face
    # at 41 instead of 73 input px (1 input px = 7 source px), so centres agree to ~4 % of the face, sizes to ~12 %.
    assert offset.norm(dim=1).max() < 0.04 * side.mean(), offset
    ratio = _side(track.boxes) / side
    assert ((ratio > 0.88) & (ratio < 1.12)).all(), ratio
    crops = face_crop.driving_crops(_canvas(clip, height, width, top, left), track)
    boxes = crops.crop_boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    centres = face_crop.box_centres(track.boxes)
    assert ((centres[:, 0] > boxes[:, 0]) & (centres[:, 0] < boxes[:, 2])).all()  # no left-square cut
    assert ((centres[:, 1] > boxes[:, 1]) & (centres[:, 1] < boxes[:, 3])).all()


def test_blank_stretch_is_filled_and_flagged(video, caplog):
    clip = video[40:70].clone()
    clip[10:20] = 0  # source frames 50-59 black
    with caplog.at_level(logging.WARNING, logger="xnemo"):
        track = face_track.track_face(clip, missing="interpolate")
    assert track.missing_frames == list(range(10, 20))
    assert any("10-19" in r.getMessage() for r in caplog.records if r.name == "xnemo")
    # Linear between the last box before (9) and the first after (20).
    for i in range(10, 20):
        t = (i - 9) / 11
        assert torch.allclose(track.boxes[i], (1 - t) * track.boxes[9] + t * track.boxes[20], atol=1e-4)

    held = face_track.track_face(clip, missing="hold")
    assert torch.equal(held.found, track.found)
    assert torch.allclose(held.boxes[10:20], held.boxes[9].expand(10, 4))

    with pytest.raises(NoFaceError, match=r"10 of 30 frames.*10-19.*'interpolate' or 'hold'"):
        face_track.track_face(clip, missing="error")


def test_blank_frames_at_the_ends_hold_the_nearest_face(video):
    clip = video[:8].clone()
    clip[:2] = 0
    clip[-1] = 0
    track = face_track.track_face(clip)
    assert track.missing_frames == [0, 1, 7]
    assert torch.equal(track.boxes[0], track.boxes[2]) and torch.equal(track.boxes[1], track.boxes[2])
    assert torch.equal(track.boxes[7], track.boxes[6])


def test_no_face_anywhere_says_what_to_do():
    with pytest.raises(NoFaceError, match=r"no face was found in any of the 4 frames; use a clip"):
        face_track.track_face(torch.zeros(4, 128, 128, 3))


def test_face_index_beyond_the_faces_present(video):
    with pytest.raises(NoFaceError, match=r"face_index 1 .* no frame shows more than 1 face.*set face_index to 0"):
        face_track.track_face(video[:2], face_index=1)


def test_face_index_picks_and_keeps_one_of_two_people(video, media_dir):
    ref = cv2.cvtColor(cv2.imread(str(media_dir / "ref_image.png")), cv2.COLOR_BGR2RGB)
    small = torch.from_numpy(cv2.resize(ref, (320, 320), interpolation=cv2.INTER_AREA)).float() / 255
    clip = _canvas(video[:40:8], 512, 900, 0, 0)  # driving face (large) on the left
    clip[:, 100:420, 560:880] = small  # reference face (smaller) on the right
    left = face_track.track_face(clip, index_mode="largest")
    right = face_track.track_face(clip, index_mode="right_to_left")
    also_right = face_track.track_face(clip, face_index=1, index_mode="left_to_right")
    assert (face_crop.box_centres(left.boxes)[:, 0] < 512).all()
    # The smaller face stays chosen on every frame although the larger one is always there.
    assert (face_crop.box_centres(right.boxes)[:, 0] > 560).all() and right.found.all()
    assert torch.allclose(also_right.boxes, right.boxes)


def test_relative_f_rts_follows_a_known_translation_and_zoom(video):
    # One real frame on a 768 px canvas, moved and zoomed about the face centre: the true f_rts of step k is
    # (ty_k / L, tx_k / L, z_k) relative to the unmoved face box of side L.
    canvas = _canvas(video[:1], 768, 768, 128, 128)[0].numpy()
    ref = face_track.get_detector().detect(face_track._to_u8(torch.from_numpy(canvas)))[0][:4]
    cx, cy = (ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2
    zoom = np.linspace(0.8, 1.25, 12)
    shift = np.stack([np.linspace(-60, 80, 12), np.linspace(50, -70, 12)], axis=1)  # (tx, ty) px
    warped = []
    for z, (tx, ty) in zip(zoom, shift):
        m = np.array([[z, 0, (1 - z) * cx + tx], [0, z, (1 - z) * cy + ty]], dtype=np.float32)
        warped.append(cv2.warpAffine(canvas, m, (768, 768), borderValue=(BACKGROUND,) * 3))
    track = face_track.track_face(torch.from_numpy(np.stack(warped)))
    f_rts = face_crop.compute_f_rts(track.boxes, ref, "relative")
    side = max(ref[2] - ref[0], ref[3] - ref[1])
    truth = torch.tensor(np.stack([shift[:, 1] / side, shift[:, 0] / side, zoom], axis=1)).float()
    error = (f_rts - truth).abs().max(dim=0).values
    print(f"\nrelative f_rts max error: dy {error[0]:.4f}, dx {error[1]:.4f}, scale {error[2]:.4f}")
    # Haar centres are good to ~2 % of the face, sizes to ~4 % after the detector's two-pass averaging.
    assert error[0] < 0.04 and error[1] < 0.04 and error[2] < 0.06


def test_f_rts_modes():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 120.0], [30.0, 10.0, 230.0, 210.0]])
    assert torch.equal(face_crop.compute_f_rts(boxes, None, "official"), torch.tensor([[0.0, 0.0, 1.0]] * 2))
    rel = face_crop.compute_f_rts(boxes, (10.0, 20.0, 110.0, 120.0), "relative")
    assert torch.allclose(rel, torch.tensor([[0.0, 0.0, 1.0], [0.4, 0.7, 2.0]]))  # (dy, dx, scale)
    with pytest.raises(ValueError, match="needs a reference face box"):
        face_crop.compute_f_rts(boxes, None, "relative")


def test_gaussian_filter_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")  # test-only cross-check; the pack has no scipy
    walk = np.random.default_rng(0).normal(size=(230, 2)).cumsum(0)
    for n in (230, 30, 7, 1):
        ours = face_crop.gaussian_filter1d(walk[:n], 5.0)
        assert np.allclose(ours, ndimage.gaussian_filter1d(walk[:n], 5.0, axis=0), atol=1e-10)


def test_reference_crops(media_dir):
    image = torch.from_numpy(cv2.cvtColor(cv2.imread(str(media_dir / "ref_image.png")), cv2.COLOR_BGR2RGB)) / 255
    box = face_track.get_detector().detect(face_track._to_u8(image))[0][:4]
    side = max(box[2] - box[0], box[3] - box[1])
    crop, info = face_crop.reference_crop(image, box, 512, 512)
    assert crop.shape == (512, 512, 3) and info.crop_size == (512, 512) and info.image_size == (512, 512)
    x0, y0, x1, y1 = info.box
    assert abs((x1 - x0) - 2 * side) <= 2 and (x1 - x0) == (y1 - y0)  # official: ~2x the face, square
    assert 0 <= x0 and 0 <= y0 and x1 <= 512 and y1 <= 512  # this one fits: moved inside, no padding
    # A face filling the picture: the box leaves it on every side; the official pads black by the largest overshoot.
    big, big_info = face_crop.reference_crop(image, (100.0, 100.0, 412.0, 412.0), 512, 512)
    assert big_info.box == (-56, -56, 568, 568)
    rows = round(56 * 512 / 624)
    assert big[: rows - 1].max() == 0 and big[:, : rows - 1].max() == 0 and big[rows + 1 : -rows - 1].max() > 0
    # A portrait output, crop mode official (default): the official square crop, Lanczos-resized to 384 x 512.
    square = face_crop.official_reference_crop(face_crop.to_u8(image), box)
    tall, tall_info = face_crop.reference_crop(image, box, 512, 384)
    assert tall_info.box == square.box and tall_info.crop_size == (512, 384)
    assert torch.equal(tall, torch.from_numpy(face_crop.lanczos_resize(square.pixels, 512, 384)).float() / 255)
    # Crop mode widen grows the box to 3:4 instead of stretching the face; a square output is the official either way.
    wide, wide_info = face_crop.reference_crop(image, box, 512, 384, mode="widen")
    bx0, by0, bx1, by1 = wide_info.box
    assert wide.shape == (512, 384, 3) and abs((by1 - by0) / (bx1 - bx0) - 4 / 3) < 0.01
    assert (wide - tall).abs().max() > 0.1
    assert torch.equal(face_crop.reference_crop(image, box, 512, 512, mode="widen")[0], crop)
    with pytest.raises(ValueError, match="crop_mode is 'stretch': pick one of official, widen"):
        face_crop.reference_crop(image, box, 512, 384, mode="stretch")
    # Motion crop: 1.1x square inside the image, else the raw box.
    motion = face_crop.reference_motion_crop(image, box)
    assert motion.shape == (1, 3, 224, 224) and -1 <= motion.min() and motion.max() <= 1
    corner = face_crop.reference_motion_crop(image, (0.0, 0.0, 200.0, 200.0), size=200)
    assert torch.allclose(corner[0], image[:200, :200].permute(2, 0, 1) * 2 - 1, atol=1e-6)


def test_reference_box_shifts_inside_when_it_fits():
    assert face_crop.reference_box((10.0, 100.0, 60.0, 150.0), (400, 400), 64, 64) == (0, 75, 100, 175)


def test_draw_track_marks_found_and_missing_frames():
    frames = torch.full((2, 64, 64, 3), 128 / 255)  # exact in uint8
    track = face_track.FaceTrack(boxes=torch.tensor([[10.0, 10.0, 40.0, 40.0]] * 2), found=torch.tensor([True, False]))
    crop_boxes = torch.tensor([[5.0, 5.0, 50.0, 50.0]] * 2)
    out = face_track.draw_track(frames, track, crop_boxes)
    assert out.shape == (2, 64, 64, 3)
    assert out[0, 25, 10, 1] > 0.85 and out[0, 25, 10, 0] < 0.1  # green face box
    assert out[1, 25, 10, 0] > 0.95 and out[1, 25, 10, 1] < 0.2  # red: filled in
    assert out[0, 25, 5, 2] > 0.95  # crop box
    assert torch.equal(out[0, 25, 25], frames[0, 25, 25])  # untouched inside
    # A red border only on the missing frame.
    assert out[1, 63, 30, 0] > 0.95 and out[0, 63, 30, 0] == frames[0, 63, 30, 0]


def test_registry_and_argument_checks():
    assert isinstance(face_track.get_detector("haar"), face_track.HaarFaceDetector)
    assert isinstance(face_track.get_detector(), face_track.BlazeFaceFaceDetector)  # the official detector by default
    with pytest.raises(ValueError, match="available: blazeface, haar"):
        face_track.get_detector("nope")
    with pytest.raises(ValueError, match="missing-face policy"):
        face_track.track_face(torch.zeros(1, 8, 8, 3), missing="skip")
    with pytest.raises(ValueError, match="face index mode"):
        face_track.track_face(torch.zeros(1, 8, 8, 3), index_mode="smallest")


def test_without_opencv_blazeface_and_the_preview_work_and_haar_says_what_to_do(monkeypatch):
    """The pack requires no OpenCV distribution: only the Haar detector needs one, and says so when there is none."""
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(
        XNeMoError,
        match=r"detector 'haar' needs OpenCV, which ComfyUI's Python cannot import .*"
        r"Use detector 'blazeface' \(the default, no OpenCV needed\), or install one "
        r"OpenCV 4\.x build",
    ):
        face_track.get_detector("haar")
    assert isinstance(face_track.get_detector(), face_track.BlazeFaceFaceDetector)
    frames = torch.full((1, 64, 64, 3), 0.5)
    track = face_track.FaceTrack(boxes=torch.tensor([[10.0, 10.0, 40.0, 40.0]]), found=torch.tensor([False]))
    out = face_track.draw_track(frames, track)
    assert out[0, 25, 10, 0] > 0.95 and out[0, 63, 30, 0] > 0.95  # filled-in box and border, drawn without cv2
    assert float((out[0, :20, :40, 0] > 0.95).float().sum()) > 20  # the "no face" label


def test_opencv_builds_other_than_4x_are_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="3.4.2"))
    with pytest.raises(XNeMoError, match=r"needs an OpenCV 4\.x build with its Haar cascade files .* 3\.4\.2"):
        face_track.get_detector("haar")
