"""Encode Motion's core face-track inputs (face_landmarks: FACE_LANDMARKS, face_boxes: BOUNDING_BOX, from ComfyUI
0.30's Detect Face Landmarks (MediaPipe)): declared on every core, used instead of the detector, checked against the
frames, and frames without a face go to the missing-face policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xnemo_pack.nodes.motion import XNeMoEncodeMotion
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES
from xnemo_pack.xnemo_core.pure.core_faces import FaceTrackInputError
from xnemo_pack.xnemo_core.pure.errors import NoFaceError

ARGS = {
    "detector": "blazeface",
    "face_index": 0,
    "face_order": "largest",
    "crop_scale": 1.1,
    "smoothing_sigma": 5.0,
    "missing_face": "interpolate",
    "f_rts_mode": "official",
}
PORTRAIT_BOX = (127.0, 129.0, 381.0, 383.0)  # MediaPipe's box of the demo portrait


@pytest.fixture(scope="module")
def xnemo(fixture_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")[1]


@pytest.fixture(scope="module")
def clip(media_dir) -> torch.Tensor:
    """Two frames of the demo portrait, the second shifted 8 px right (so a held box is visibly the first's)."""
    picture = torch.from_numpy(np.asarray(Image.open(media_dir / "ref_image.png").convert("RGB"), np.float32) / 255)
    return torch.stack([picture, torch.roll(picture, 8, dims=1)])


def boxes(*frames):
    x0, y0, x1, y1 = PORTRAIT_BOX
    return [
        [{"x": x0 + dx, "y": y0, "width": x1 - x0, "height": y1 - y0, "label": "face"}] if dx is not None else []
        for dx in frames
    ]


def encode(xnemo, clip, **options):
    return XNeMoEncodeMotion.execute(xnemo, clip, **{**ARGS, **options}).result[0]


def test_inputs_are_optional_sockets_of_cores_type_names():
    inputs = {i.id: i for i in XNeMoEncodeMotion.define_schema().inputs}
    for name, io_type in (("face_landmarks", "FACE_LANDMARKS"), ("face_boxes", "BOUNDING_BOX")):
        spec = inputs[name]
        assert spec.get_io_type() == io_type and spec.optional and spec.as_dict()["forceInput"] is True
        assert "crops differ from the official" in spec.tooltip
    assert list(inputs)[-2:] == ["face_landmarks", "face_boxes"]  # after every widget: saved widgets_values keep


def test_core_boxes_replace_the_detector(xnemo, clip):
    own = encode(xnemo, clip)
    assert own.boxes[0].tolist() == list(PORTRAIT_BOX)
    as_core = [
        [{"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "label": "face", "score": 0.9}]
        for x0, y0, x1, y1 in own.boxes.tolist()
    ]
    given = encode(xnemo, clip, face_boxes=as_core)
    assert torch.equal(given.boxes, own.boxes) and torch.equal(given.tokens, own.tokens)
    shifted = encode(xnemo, clip, face_boxes=boxes(0, 8))  # the given boxes are used as they are
    assert shifted.boxes[1].tolist() == [135.0, 129.0, 389.0, 383.0]
    landmarks = {
        "frames": [[{"bbox_xyxy": np.array(b, np.float32), "score": 0.9}] for b in own.boxes.tolist()],
        "image_size": tuple(clip.shape[1:3]),
    }
    assert torch.equal(encode(xnemo, clip, face_landmarks=landmarks).tokens, own.tokens)


def test_a_track_that_does_not_fit_the_frames_is_refused(xnemo, clip):
    with pytest.raises(FaceTrackInputError, match=r"face_boxes face track has 1 frames but images has 2"):
        encode(xnemo, clip, face_boxes=boxes(0))
    other_size = {"frames": [[], []], "image_size": (720, 1280)}
    with pytest.raises(FaceTrackInputError, match=r"detected on 1280x720 pictures but images are 512x512"):
        encode(xnemo, clip, face_landmarks=other_size)
    with pytest.raises(FaceTrackInputError, match=r"not both"):
        encode(xnemo, clip, face_boxes=boxes(0, 8), face_landmarks={"frames": [[], []]})
    with pytest.raises(FaceTrackInputError, match=r"frame 1: .* is not a box with x, y, width and height"):
        encode(xnemo, clip, face_boxes=[[], [{"x": 1}]])


def test_frames_without_a_face_follow_the_missing_face_policy(xnemo, clip):
    with pytest.raises(NoFaceError, match=r"1 of 2 frames have no face \(frames 1\); set the missing-face policy"):
        encode(xnemo, clip, face_boxes=boxes(0, None), missing_face="error")
    held = encode(xnemo, clip, face_boxes=boxes(None, 8), missing_face="hold")
    assert held.boxes[0].tolist() == held.boxes[1].tolist() == [135.0, 129.0, 389.0, 383.0]
    assert held.face_found.tolist() == [False, True]
    with pytest.raises(NoFaceError, match=r"no face was found in any of the 2 frames"):
        encode(xnemo, clip, face_boxes=boxes(None, None))
