"""Core's face detection (ComfyUI 0.30+: comfy_extras/mediapipe) against the official preprocessing goldens, and
Encode Motion's core face-track input.

1. Core ships MediaPipe's short-range BlazeFace in torch, loaded from models/detection/mediapipe_face_fp32.safetensors.
   That file is not here, and it cannot be built from the official blaze_face_short_range.tflite: core's loader also
   needs FaceMesh, blendshapes, the full-range detector, canonical geometry and mesh topology. Its short-range
   detector part can: the key mapping below loads it strictly from the .tflite, and the measurement then runs core's
   own detection code (`FaceLandmarker.run_detector_batch`) on the goldens' frames. Skipped on cores without it.
2. A face track handed to Encode Motion (FACE_LANDMARKS or BOUNDING_BOX per frame) built from the golden boxes gives
   the official crops, the same as the pack's own detection (both cores: the payloads are plain Python).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_preprocess_parity import PREPROCESS_DIR, _px_tolerance, frames, golden, manifest, reference  # noqa: F401

from xnemo_pack.xnemo_core.pure import blazeface, core_faces, face_crop, face_track

pytestmark = pytest.mark.parity
TFLITE = PREPROCESS_DIR / blazeface.MODEL_NAME
NET_TOLERANCE = 1e-4  # same fp32 weights, another op order (the pack runs the tflite graph, core its own modules)


def core_detector_state_dict(path) -> dict[str, torch.Tensor]:
    """The short-range .tflite's convolutions under core's BlazeFace module names (`stem`, `blocks.N.depthwise`,
    `blocks.N.pointwise`, `cls_16`/`reg_16` on the 16x16 grid, `cls_8`/`reg_8` on the 8x8): the tflite calls the
    grids by stride (classificator_8 = 16x16 cells), core by size."""
    from xnemo_pack.xnemo_core.pure import tflite

    model = tflite.read_model(path.read_bytes())
    consts = {t.index: t.data for t in model.tensors if t.data is not None}
    names = {"conv2d": "stem", "classificator_8": "cls_16", "classificator_16": "cls_8"}
    names |= {"regressor_8": "reg_16", "regressor_16": "reg_8"}
    for k in range(16):
        names["depthwise_conv2d" + (f"_{k}" if k else "")] = f"blocks.{k}.depthwise"
        names[f"conv2d_{k + 1}"] = f"blocks.{k}.pointwise"
    out = {}
    for op in model.operators:
        if op.op == "DEQUANTIZE":  # fp16 in the file, fp32 in the graph
            consts[op.outputs[0]] = consts[op.inputs[0]].astype(np.float32)
        elif op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            name = names[model.tensors[op.outputs[0]].name]
            weight = torch.from_numpy(np.array(consts[op.inputs[1]], np.float32))
            weight = weight.permute(0, 3, 1, 2) if op.op == "CONV_2D" else weight.permute(3, 0, 1, 2)  # -> OIHW
            out[f"{name}.weight"] = weight.contiguous()
            out[f"{name}.bias"] = torch.from_numpy(np.array(consts[op.inputs[2]], np.float32))
    return out


@pytest.fixture(scope="module")
def core_mediapipe():
    return pytest.importorskip(
        "comfy_extras.mediapipe.face_landmarker",
        reason="this ComfyUI has no core MediaPipe face nodes (added after 0.3.75)",
    )


@pytest.fixture(scope="module")
def core_landmarker(core_mediapipe):
    landmarker = core_mediapipe.FaceLandmarker(detector_variant="short").eval()
    landmarker.detector.load_state_dict(core_detector_state_dict(TFLITE), strict=True)  # every key, no extra
    return landmarker


def core_boxes(landmarker, pictures: np.ndarray) -> np.ndarray:
    """Core's best detection per picture in source pixels, as core computes it (floats), before its FaceMesh."""
    with torch.inference_mode():
        _, rects, _, found = landmarker.run_detector_batch(list(pictures), score_thresh=blazeface.MIN_SCORE)
    boxes = []
    for (cx, cy, side), dets in zip(rects, found):
        assert len(dets) >= 1, "core found no face"
        box = dets[0, :4].astype(np.float64) * side  # core's mapping out of its letterbox square
        boxes.append(box + [cx - side / 2, cy - side / 2] * 2)
    return np.stack(boxes)


def mediapipe_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """MediaPipe Tasks' integer boxes (origin and size truncated) from float pixel boxes."""
    rel = (boxes / [width, height, width, height]).astype(np.float32)
    return np.array([blazeface.to_pixels(b, width, height) for b in rel], np.float64)


def crops_of(clip: torch.Tensor, boxes: np.ndarray):
    track = face_track.FaceTrack(boxes=torch.from_numpy(boxes).float(), found=torch.ones(len(boxes), dtype=bool))
    return face_crop.driving_crops(clip, track)


def wrong_md5(crops, manifest) -> list[int]:  # noqa: F811
    md5 = manifest["info"]["drv_me_input_u8_md5_per_frame"]
    pixels = crops.pixels_u8().numpy()
    return [i for i, p in enumerate(pixels) if hashlib.md5(np.ascontiguousarray(p).tobytes()).hexdigest() != md5[i]]


# ----------------------------------------------------------------------------------------------------------------------
# 1. Core's detector


def test_core_loader_needs_more_than_the_official_tflite(core_mediapipe):
    """The detector part maps one to one; the whole file core's loader reads cannot come from the .tflite."""
    from comfy_extras.nodes_mediapipe import FaceLandmarkerModel

    weights = {f"detector_short.{k}": v for k, v in core_detector_state_dict(TFLITE).items()}
    assert len(weights) == 2 * (1 + 2 * 16 + 4)  # stem, 16 blocks (depthwise + pointwise), 4 heads: weight + bias
    with pytest.raises(KeyError):  # canonical geometry, topology, mesh and blendshapes are not in the .tflite
        FaceLandmarkerModel(weights)


def test_core_network_with_the_official_weights_matches_the_packs(core_landmarker):
    net = blazeface.load_network(TFLITE)
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ours, our_logits = net(x)
        theirs, their_logits = core_landmarker.detector(x)
    error = max((ours - theirs).abs().max().item(), (our_logits - their_logits[..., 0]).abs().max().item())
    print(f"\nraw network outputs, pack vs core: max abs error {error:.2g}")
    assert error <= NET_TOLERANCE


@pytest.fixture(scope="module")
def core_driving(core_landmarker, frames):  # noqa: F811
    return core_boxes(core_landmarker, (frames * 255).round().to(torch.uint8).numpy())


def test_core_boxes_as_core_returns_them_are_not_the_official(core_driving, frames, golden, manifest):  # noqa: F811
    """Core keeps MediaPipe's float box; the Tasks API (and so the official crops) truncates origin and size to
    whole pixels. The box is off by up to 2 px and the integer crop slices move by 1 px on most frames."""
    error = np.abs(core_driving - golden["drv_bbox_raw"])
    beyond = int((error > _px_tolerance(manifest, "drv_bbox_raw")).any(1).sum())
    crops = crops_of(frames, core_driving)
    slices = int((crops.crop_boxes.numpy().astype(np.int64) != golden["drv_crop_box_int"]).any(1).sum())
    wrong = wrong_md5(crops, manifest)
    print(
        f"\ncore's float boxes: max error {error.max():.2f} px, mean {error.mean():.2f} px, {beyond} of "
        f"{len(error)} frames beyond 1 px; crop slices differ on {slices} frames, 224 px crops on {len(wrong)}"
    )
    assert error.max() > 1 and beyond > 0 and slices > 0 and len(wrong) == slices  # the pack keeps its own detector


def test_core_boxes_truncated_as_mediapipe_are_exact_at_512(core_landmarker, core_driving, reference, golden):  # noqa: F811
    """At 512 px the letterbox step is a whole 4 px, so core's float warp samples the pixels OpenCV's does."""
    driving = mediapipe_pixels(core_driving, 512, 512)
    assert np.array_equal(driving, golden["drv_bbox_raw"])
    picture = (reference * 255).round().to(torch.uint8).numpy()[None]
    ref = mediapipe_pixels(core_boxes(core_landmarker, picture), picture.shape[2], picture.shape[1])[0]
    assert np.array_equal(ref, golden["ref_bbox"])


def test_core_differs_from_mediapipe_where_the_letterbox_step_is_fractional(core_landmarker, frames):  # noqa: F811
    """At 1000 px (a 7.8125 px step) core's float bilinear warp and OpenCV's 1/32-pixel fixed-point warp (the pack,
    checked integer for integer against OpenCV in tests/unit/test_blazeface.py) feed the network other pixels."""
    from PIL import Image

    picked = (frames[::12] * 255).round().to(torch.uint8).numpy()
    big = np.stack([np.asarray(Image.fromarray(f).resize((1000, 1000), Image.BICUBIC)) for f in picked])
    theirs = mediapipe_pixels(core_boxes(core_landmarker, big), 1000, 1000)
    found = blazeface.BlazeFaceDetector(TFLITE).detect_frames(torch.from_numpy(big))
    ours = np.array([faces[0].box for faces in found])
    error = np.abs(theirs - ours)
    print(
        f"\n1000 px: core (truncated) vs MediaPipe: max {error.max():.0f} px on {int((error > 0).any(1).sum())} of "
        f"{len(big)} frames"
    )
    assert 0 < error.max() <= 1


# ----------------------------------------------------------------------------------------------------------------------
# 2. A core face track into Encode Motion


@pytest.fixture(scope="module")
def own_crops(frames):  # noqa: F811
    track = face_track.track_face(frames, face_track.get_detector("blazeface"), missing="error")
    return face_crop.driving_crops(frames, track)


@pytest.mark.parametrize("form", ["face_boxes", "face_landmarks"])
def test_core_track_of_the_golden_boxes_gives_the_official_crops(form, frames, golden, manifest, own_crops):  # noqa: F811
    boxes = golden["drv_bbox_raw"].astype(float)
    if form == "face_boxes":  # core's BOUNDING_BOX list: one list of {x, y, width, height, ...} per frame
        payload = [
            [{"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "label": "face", "score": 0.9}]
            for x0, y0, x1, y1 in boxes
        ]
        given = core_faces.given_track(None, payload, *frames.shape[1:3])
    else:  # core's FACE_LANDMARKS: per frame the faces' dicts, bbox_xyxy in pixels
        payload = {
            "frames": [[{"bbox_xyxy": np.float32(b), "score": 0.9}] for b in boxes],
            "image_size": tuple(frames.shape[1:3]),
        }
        given = core_faces.given_track(payload, None, *frames.shape[1:3])
    track = face_track.track_face(frames, given, missing="error")
    crops = face_crop.driving_crops(frames, track)
    assert np.array_equal(crops.crop_boxes.numpy().astype(np.int64), golden["drv_crop_box_int"])
    assert torch.equal(crops.crop_boxes, own_crops.crop_boxes) and torch.equal(crops.crops, own_crops.crops)
    assert wrong_md5(crops, manifest) == []
