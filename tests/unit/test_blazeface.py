"""BlazeFace in torch: the TFLite reader, MediaPipe's pre/post-processing pieces, the model-file checks, and face
tracking with BlazeFace on frames the short-range model cannot see whole (landscape, small faces, blank gaps)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xnemo_pack.xnemo_core.pure import blazeface, face_crop, face_track, tflite
from xnemo_pack.xnemo_core.pure.errors import NoFaceError

MODEL = blazeface.BUNDLED_MODEL


@pytest.fixture(scope="module")
def model() -> tflite.Model:
    return tflite.read_model(MODEL.read_bytes())


@pytest.fixture(scope="module")
def video(media_dir: Path) -> torch.Tensor:
    av = pytest.importorskip("av")
    with av.open(str(media_dir / "driving_video.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames[:60:6])).float() / 255  # 10 frames 0.24 s apart


def _canvas(frames: torch.Tensor, height: int, width: int, top: int, left: int, scale: float = 1.0) -> torch.Tensor:
    if scale != 1.0:
        size = round(frames.shape[1] * scale)
        frames = torch.from_numpy(
            np.stack([cv2.resize(f.numpy(), (size, size), interpolation=cv2.INTER_AREA) for f in frames])
        )
    out = torch.full((frames.shape[0], height, width, 3), 0.2)
    out[:, top : top + frames.shape[1], left : left + frames.shape[2]] = frames
    return out


def test_bundled_model_and_licence():
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == blazeface.MODEL_SHA256
    notice = (MODEL.parent / "README.md").read_text()
    assert "Apache" in notice and blazeface.MODEL_SHA256 in notice
    assert (MODEL.parent / "LICENSE-blaze_face_short_range.txt").is_file()


def test_reader_finds_the_short_range_graph(model):
    counts = {}
    for op in model.operators:
        counts[op.op] = counts.get(op.op, 0) + 1
    assert counts == {
        "DEQUANTIZE": 74,
        "CONV_2D": 21,
        "RELU": 17,
        "DEPTHWISE_CONV_2D": 16,
        "ADD": 16,
        "PAD": 11,
        "RESHAPE": 4,
        "MAX_POOL_2D": 3,
        "CONCATENATION": 2,
    }
    assert model.tensors[model.inputs[0]].shape == (1, 128, 128, 3)
    assert sorted(model.tensors[i].shape for i in model.outputs) == [(1, 896, 1), (1, 896, 16)]
    first = model.operators[2]
    assert first.op == "CONV_2D" and first.options["stride_w"] == 2 and first.options["padding"] == 0  # SAME
    kernel = model.tensors[first.inputs[1]]
    assert kernel.shape == (24, 5, 5, 3) and kernel.data is None  # fp16 constant behind a DEQUANTIZE
    assert model.tensors[model.operators[1].inputs[0]].data.dtype == np.float16
    assert tflite.input_normalization(model) == (127.5, 127.5)  # metadata: input in [-1, 1]
    net = blazeface.BlazeFaceNet(model)
    assert 100_000 < net.parameter_count < 110_000


def test_reader_rejects_what_it_cannot_read(tmp_path):
    data = MODEL.read_bytes()
    with pytest.raises(tflite.TFLiteFormatError, match="TFL3"):
        tflite.read_model(b"\0" * 64)
    with pytest.raises(tflite.TFLiteFormatError, match="outside the"):
        tflite.read_model(data[:20000])
    bad = tmp_path / "blaze_face_short_range.tflite"
    bad.write_bytes(data[:-1] + b"\1")
    with pytest.raises(blazeface.BlazeFaceModelError, match=r"not the official blaze_face_short_range.tflite.*restore"):
        blazeface.load_network(bad)
    with pytest.raises(blazeface.BlazeFaceModelError, match="not found"):
        blazeface.load_network(tmp_path / "missing.tflite")


def test_anchors_and_letterbox():
    anchors = blazeface.ssd_anchors()
    assert anchors.shape == (896, 2)
    assert anchors[0].tolist() == anchors[1].tolist() == [1 / 32, 1 / 32]  # 16x16 cells, 2 anchors each
    assert anchors[512].tolist() == [1 / 16, 1 / 16] and anchors[-1].tolist() == [15 / 16, 15 / 16]  # 8x8 cells, 6 each
    box = blazeface.letterbox(1920, 1080)
    assert (box.roi_cx, box.roi_cy, box.roi_w, box.roi_h) == (960, 540, 1920, 1920)  # padded top and bottom
    assert blazeface.letterbox(600, 800, (100, 100, 300, 200)).roi_w == 200  # a region: squared on its long side


@pytest.mark.parametrize("width,height", [(512, 512), (1280, 720), (720, 1280), (1920, 1080), (700, 500)])
def test_letterbox_pixels_equal_opencv_warp_perspective(width, height):
    """MediaPipe's CPU ImageToTensor is OpenCV's warpPerspective of the uint8 frame; ours is the same integers."""
    image = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = blazeface.letterbox(width, height)
    corners = cv2.boxPoints(((box.roi_cx, box.roi_cy), (box.roi_w, box.roi_h), 0.0)).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(corners, np.array([[0, 128], [0, 0], [128, 0], [128, 128]], np.float32))
    expected = cv2.warpPerspective(image, matrix, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ours = blazeface.model_input(torch.from_numpy(image)[None], blazeface.make_warp(box))[0]
    assert torch.equal(((ours.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(expected))


def test_weighted_nms_averages_overlapping_boxes():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]], np.float32)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    keypoints = np.zeros((3, 6, 2), np.float32)
    out = blazeface.weighted_nms(boxes, keypoints, scores)
    assert [round(s, 3) for _, _, s in out] == [0.9, 0.7]  # best score kept, the far box separate
    assert np.allclose(out[0][0], (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5)
    assert np.allclose(out[1][0], boxes[2])


def test_landscape_small_face_and_gaps_are_tracked(video):
    """A 1920x1080 frame with a 160 px face: letterboxed whole to 128 px the face is 11 px, below what the
    short-range model sees; the square search finds it, and the track matches the face's true position."""
    detector = face_track.get_detector("blazeface")
    base = face_track.track_face(video, detector)
    scale, top, left = 160 / 290, 700, 1500
    clip = _canvas(video, 1080, 1920, top, left, scale)
    clip[4:6] = 0.2  # a two-frame blank gap
    track = face_track.track_face(clip, detector)
    assert track.missing_frames == [4, 5]
    keep = track.found
    expected = base.boxes[keep] * scale + torch.tensor([left, top, left, top])
    side = (expected[:, 2] - expected[:, 0]).mean()
    error = (face_crop.box_centres(track.boxes[keep]) - face_crop.box_centres(expected)).norm(dim=1).max()
    ratio = (track.boxes[keep, 2] - track.boxes[keep, 0]) / (expected[:, 2] - expected[:, 0])
    assert error < 0.08 * side and ((ratio > 0.85) & (ratio < 1.15)).all(), (error, ratio)


def test_no_face_and_face_index_messages():
    detector = face_track.get_detector("blazeface")
    with pytest.raises(NoFaceError, match=r"no face was found in any of the 3 frames"):
        face_track.track_face(torch.zeros(3, 256, 384, 3), detector)


def test_detector_runs_batched_on_the_given_device(video):
    detector = blazeface.get_detector(MODEL, "cpu")
    frames = (video * 255).round().to(torch.uint8)
    batched = detector.detect_frames(frames)
    single = [detector.detect_frames(frames[i : i + 1])[0] for i in range(len(frames))]
    assert [[d.box for d in f] for f in batched] == [[d.box for d in f] for f in single]
    if torch.cuda.is_available():
        gpu = blazeface.get_detector(MODEL, "cuda").detect_frames(frames.cuda())
        for a, b in zip(batched, gpu):
            assert np.abs(np.array([d.box for d in a]) - np.array([d.box for d in b])).max() <= 1


def _moved_to_a_device(monkeypatch) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Record every tensor sent with `.to(device)` (the stand-in for a host -> GPU copy): shape and dtype."""
    moved = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args and isinstance(args[0], (torch.device, str)) else None)
        if target is not None:
            moved.append((tuple(self.shape), self.dtype))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    return moved


def test_only_uint8_model_inputs_reach_the_device(monkeypatch):
    """Full-HD float frames (ComfyUI's IMAGE): the 128x128 letterbox is sampled on the frames' side, and what is sent
    to the detector's device is the uint8 input, N x 128 x 128 x 3 bytes per batch, not N x H x W x 3 x 4."""
    detector = blazeface.BlazeFaceDetector(MODEL, "cpu", batch_size=2)
    frames = torch.rand(5, 1080, 1920, 3, generator=torch.Generator().manual_seed(0))
    expected = detector.detect_frames(frames)  # fills the warp cache, so only per-batch traffic is recorded below
    reserved = []
    moved = _moved_to_a_device(monkeypatch)
    got = detector.detect_frames(frames, reserve=reserved.append)
    monkeypatch.undo()
    assert [[f.box for f in faces] for faces in got] == [[f.box for f in faces] for faces in expected]
    pixels = 128 * 128 * 3
    assert moved == [((n, 128, 128, 3), torch.uint8) for n in (2, 2, 1)]
    assert sum(torch.Size(s).numel() for s, _ in moved) == 5 * pixels  # bytes: uint8; 1080p float would be 190x
    assert reserved == [detector.memory_required(n) for n in (2, 2, 1)]


def test_memory_estimate_covers_the_batch():
    """What a batch asks ComfyUI for: the uint8 and float inputs and every activation the forward keeps (float32)."""
    net = blazeface.load_network(MODEL)
    conv_outputs = []
    original = net._act

    def record(h, kind):  # every convolution's (activated) output passes here
        conv_outputs.append(h.numel() * h.element_size())
        return original(h, kind)

    net._act = record
    net(torch.zeros(1, 3, 128, 128))
    assert sum(conv_outputs) <= net.activation_bytes < 9 * 2**20  # conv outputs are part of the activations
    detector = blazeface.get_detector(MODEL, "cpu")
    assert detector.memory_required(32) == 32 * detector.memory_required(1)
    # 32 frames: ~270 MiB (a 1080p float32 batch alone was 760 MiB, and ComfyUI was not told)
    assert 32 * (5 * 128 * 128 * 3 + sum(conv_outputs)) < detector.memory_required(32) < 320 * 2**20


def test_tf32_is_off_while_the_network_runs_and_restored_after(video, monkeypatch):
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    detector = blazeface.get_detector(MODEL, "cpu")
    seen = []
    forward = detector.net.forward

    def spy(x):
        seen.append((conv.fp32_precision, matmul.fp32_precision))
        return forward(x)

    monkeypatch.setattr(detector.net, "forward", spy)
    try:
        conv.fp32_precision = matmul.fp32_precision = "tf32"
        detector.detect_frames(video[:2])
        assert seen == [("ieee", "ieee")]
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
