"""Issue 11 at the nodes: Encode Motion and Reference Condition detect with BlazeFace by default (through
adapters/face_model: the bundled model file, ComfyUI's device), a missing model file gets a message that says what to
do, and Encode Motion's crop_scale reaches the reference's own motion crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xnemo_pack.nodes.motion import XNeMoEncodeMotion
from xnemo_pack.xnemo_core import pipeline
from xnemo_pack.xnemo_core.adapters import face_model
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.pure import blazeface, face_crop
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES


@pytest.fixture(scope="module")
def xnemo(fixture_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")[1]


@pytest.fixture(scope="module")
def portrait(media_dir) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(media_dir / "ref_image.png").convert("RGB"), np.float32) / 255)[None]


def test_encode_motion_defaults_to_blazeface_and_finds_the_official_box(xnemo, portrait):
    defaults = {i.id: i.default for i in XNeMoEncodeMotion.define_schema().inputs if hasattr(i, "default")}
    assert defaults["detector"] == "blazeface" and pipeline.FaceOptions().detector == "blazeface"
    args = {
        k: defaults[k]
        for k in ("detector", "face_index", "face_order", "crop_scale", "smoothing_sigma", "missing_face", "f_rts_mode")
    }
    motion, _ = XNeMoEncodeMotion.execute(xnemo, portrait, **{**args, "crop_scale": 1.3}).result
    assert motion.boxes[0].tolist() == [127.0, 129.0, 381.0, 383.0]  # MediaPipe's box of this portrait
    assert motion.crop_scale == 1.3


def test_reference_motion_crop_uses_the_motion_crop_scale(xnemo, portrait, monkeypatch):
    motion, _ = XNeMoEncodeMotion.execute(
        xnemo,
        portrait,
        detector="blazeface",
        face_index=0,
        face_order="largest",
        crop_scale=1.3,
        smoothing_sigma=5.0,
        missing_face="interpolate",
        f_rts_mode="official",
    ).result
    seen = []

    def spy(image, box, scale=1.1, size=224):
        seen.append(scale)
        raise RuntimeError("stop after the crop")

    monkeypatch.setattr(face_crop, "reference_motion_crop", spy)
    monkeypatch.setattr(pipeline.clip, "check_clip_vision", lambda clip_vision: None)  # no encoder is reached
    monkeypatch.setattr(pipeline.vae_adapter, "vae_kind", lambda vae: "sd")
    with pytest.raises(RuntimeError, match="stop after the crop"):
        pipeline.reference_condition(xnemo, portrait, None, None, motion, 512, 512)
    assert seen == [1.3]


def test_missing_model_file_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setattr(blazeface, "BUNDLED_MODEL", tmp_path / "models" / blazeface.MODEL_NAME)
    monkeypatch.setattr(face_model.folder_paths, "get_full_path", lambda folder, name: None)
    with pytest.raises(
        blazeface.BlazeFaceModelError,
        match=r"neither the pack's models/ folder .* nor "
        r"ComfyUI/models/x-nemo/.*or pick the 'haar' detector",
    ):
        face_model.face_detector("blazeface")
    found = tmp_path / "x-nemo" / blazeface.MODEL_NAME
    found.parent.mkdir()
    found.write_bytes(b"TFL3 but not the model")
    monkeypatch.setattr(face_model.folder_paths, "get_full_path", lambda folder, name: str(found))
    with pytest.raises(blazeface.BlazeFaceModelError, match=r"is not the official blaze_face_short_range.tflite"):
        face_model.face_detector("blazeface")


def test_blazeface_asks_comfyui_for_its_memory_before_each_batch(monkeypatch, portrait):
    """Each batch first asks ComfyUI's memory manager (free_memory on the detector's device) for what it needs."""
    import comfy.model_management as mm

    asked = []
    monkeypatch.setattr(mm, "free_memory", lambda nbytes, device, *a, **k: asked.append((nbytes, device)))
    detector = face_model.face_detector("blazeface")
    frames = portrait.expand(3, -1, -1, -1)
    detector.batch_size = 2
    found = detector.detect_batch(frames)
    assert len(found) == 3 and all(found)  # the portrait's face, in every frame
    blaze = detector._blaze
    device = mm.get_torch_device()
    assert asked == [(blaze.memory_required(2), device), (blaze.memory_required(1), device)]
