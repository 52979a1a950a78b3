"""Sample XNEMO_MOTION payloads for tests, with a real (randomly initialised) fusion head."""

from __future__ import annotations

import torch

from xnemo_pack.xnemo_core.pure.motion_encoder import MotionFusion
from xnemo_pack.xnemo_core.pure.payloads import MotionSequence


def fusion_head(seed: int = 0) -> MotionFusion:
    g = torch.Generator().manual_seed(seed)
    head = MotionFusion(feature_dim=512, token_dim=16, bbox_dim=3, bbox_embed_dim=64)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return head.eval().requires_grad_(False)


def motion(frames: int = 7, **changes) -> MotionSequence:
    g = torch.Generator().manual_seed(1)
    head = fusion_head()
    feats = torch.randn(frames, 512, generator=g)
    f_rts = torch.rand(frames, 3, generator=g)
    with torch.no_grad():
        tokens = head(feats, f_rts) + 1e-7 * torch.randn(frames, 32, 16, generator=g)
    found = torch.ones(frames, dtype=torch.bool)
    found[2] = False
    fields = {
        "tokens": tokens,
        "face_features": feats,
        "f_rts": f_rts,
        "fusion": head,
        "boxes": torch.rand(frames, 4, generator=g) * 300,
        "face_found": found,
        "fps": 29.97002997002997,
        "crop_scale": 1.1,
    }
    fields.update(changes)
    return MotionSequence(**fields)


def assert_same(a: MotionSequence, b: MotionSequence) -> None:
    for name in ("tokens", "face_features", "f_rts", "boxes", "face_found"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.fps == b.fps and a.crop_scale == b.crop_scale
