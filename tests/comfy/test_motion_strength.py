"""Reference Condition's motion_strength / head_strength, through the node: what reaches the positive branch.

At 1/1 the positive branch carries the driving motion and at 0/0 the portrait's own motion (what the negative branch
carries) on every frame, bit for bit. Tiny fixture X-NeMo weights (CPU, fp32); the CLIP vision and VAE are stand-ins
of the right output shapes: the strength never touches them (the pipeline tests run the real ones).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xnemo_pack.nodes.motion import XNeMoEncodeMotion
from xnemo_pack.nodes.reference import XNeMoReferenceCondition
from xnemo_pack.xnemo_core import pipeline
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.adapters.unet_patch import MOTION_COND
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

SIZE = 128
FACE_ARGS = {"detector": "haar", "face_index": 0, "face_order": "largest"}


class StandInClipVision:
    """Not a ViT-L/14: only reaches the pipeline through `stand_in_encoders` (the motion path is what is tested)."""


class StandInVae:
    pass


def stand_in_encoders(mp: pytest.MonkeyPatch) -> None:
    """CLIP and VAE stand-ins: fixed embedding and latent, past the pipeline's encoder checks."""
    mp.setattr(pipeline.clip, "check_clip_vision", lambda clip_vision: None)
    mp.setattr(pipeline.vae_adapter, "vae_kind", lambda vae: "sd")
    mp.setattr(
        pipeline,
        "encode_reference",
        lambda clip_vision, vae, image, box, crop: (
            torch.full((1, 1, 768), 0.01),
            torch.full((1, 4, crop.shape[1] // 8, crop.shape[2] // 8), 0.1),
        ),
    )


@pytest.fixture(scope="module")
def setup(fixture_dir, media_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    _, xnemo = load_xnemo(files, "fp32")
    clip_vision, vae = StandInClipVision(), StandInVae()
    image = Image.open(media_dir / "ref_image.png").convert("RGB")
    portrait = torch.from_numpy(np.asarray(image.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float32) / 255)[None]
    # driving: the portrait moved and zoomed, so f_rts_mode 'relative' gives every frame its own head parameter
    moved = [
        portrait,
        torch.roll(portrait, 6, dims=2),
        torch.nn.functional.interpolate(portrait.permute(0, 3, 1, 2), scale_factor=1.2, mode="bilinear")[
            ..., 6 : 6 + SIZE, 10 : 10 + SIZE
        ].permute(0, 2, 3, 1),
    ]
    driving = XNeMoEncodeMotion.execute(
        xnemo,
        torch.cat(moved),
        **FACE_ARGS,
        crop_scale=1.1,
        smoothing_sigma=0.0,
        missing_face="interpolate",
        f_rts_mode="relative",
        reference=portrait,
    ).result[0]
    return xnemo, clip_vision, vae, portrait, driving


@pytest.fixture(scope="module")
def branches(setup) -> dict:
    """{strength (expression = head): (positive motion tokens, negative motion tokens)} from Reference Condition."""
    xnemo, clip_vision, vae, portrait, driving = setup
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        stand_in_encoders(mp)
        for strength in (0.0, 0.5, 1.0):
            out[strength] = _branch(xnemo, portrait, clip_vision, vae, driving, strength)
    return out


def _branch(xnemo, portrait, clip_vision, vae, driving, strength):
    """(positive, negative) motion tokens of Reference Condition at one strength (expression = head)."""
    positive, negative, *_ = XNeMoReferenceCondition.execute(
        xnemo,
        portrait,
        clip_vision,
        vae,
        driving,
        SIZE,
        SIZE,
        **FACE_ARGS,
        motion_strength=strength,
        head_strength=strength,
    ).result
    return (
        positive[0][1]["model_conds"][MOTION_COND].cond,
        negative[0][1]["model_conds"][MOTION_COND].cond,
    )


def test_strength_endpoints_bit_for_bit(setup, branches):
    driving = setup[4]
    assert not torch.equal(driving.f_rts[1:], driving.f_rts[:1].expand(2, -1)), "the head must move in this clip"
    positive, _ = branches[1.0]
    assert torch.equal(positive, driving.tokens)
    positive, negative = branches[0.0]
    assert torch.equal(positive, negative)  # the portrait's own motion on every frame
    assert not torch.equal(positive, driving.tokens)


def test_strength_between_moves_towards_the_driving_motion(setup, branches):
    driving = setup[4]
    distances = [float((branches[s][0] - driving.tokens).norm()) for s in (0.0, 0.5, 1.0)]
    assert distances[0] > distances[1] > distances[2] == 0.0
    assert all(torch.equal(branches[s][1], branches[0.0][1]) for s in (0.5, 1.0))  # the negative never changes
