"""X-NeMo Interpolate Motion node, called in-process against the real comfy_api."""

from __future__ import annotations

import pytest
import torch

from xnemo_pack.nodes.interpolate import NODES, XNeMoInterpolateMotion
from xnemo_pack.xnemo_core.pure.payloads import MotionSequence


class TinyFusion(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(515, 512)

    def forward(self, face_features, f_rts):
        return self.proj(torch.cat([face_features, f_rts], dim=-1)).reshape(-1, 32, 16)


def motion(frames: int, seed: int, fusion: torch.nn.Module, fps: float | None = 25.0) -> MotionSequence:
    g = torch.Generator("cpu").manual_seed(seed)
    return MotionSequence(
        tokens=torch.randn(frames, 32, 16, generator=g),
        face_features=torch.randn(frames, 512, generator=g),
        f_rts=torch.randn(frames, 3, generator=g),
        fusion=fusion,
        fps=fps,
    )


@pytest.fixture
def pair():
    fusion = TinyFusion()
    return motion(5, 0, fusion), motion(4, 1, fusion)


def test_schema_registered_and_tooltipped():
    assert NODES == [XNeMoInterpolateMotion]
    info = XNeMoInterpolateMotion.GET_NODE_INFO_V1()
    assert info["category"] == "X-NeMo" and info["display_name"] == "X-NeMo Interpolate Motion"
    for group in ("required", "optional"):
        for name, (_, options) in info["input"][group].items():
            assert options.get("tooltip"), name
    assert all(info["output_tooltips"])


def test_transition_keyframes_and_retime(pair):
    a, b = pair
    out = XNeMoInterpolateMotion.execute(motion_a=a, motion_b=b, frames=6, method="slerp", easing="ease_in_out").result[
        0
    ]
    assert out.frames == 6 and torch.equal(out.tokens[0], a.tokens[-1]) and torch.equal(out.tokens[-1], b.tokens[0])
    out = XNeMoInterpolateMotion.execute(
        motion_a=a, frames=4, method="lerp", easing="linear", keyframes="0, -1, 2"
    ).result[0]
    assert out.frames == 3 + 2 * 2 and torch.equal(out.tokens[3], a.tokens[-1])
    out = XNeMoInterpolateMotion.execute(motion_a=a, frames=2, method="slerp", easing="linear", retime_fps=50.0).result[
        0
    ]
    assert out.frames == 10 and out.fps == 50.0


def test_errors_tell_what_to_do(pair):
    a, _ = pair
    with pytest.raises(ValueError, match="connect motion_b"):
        XNeMoInterpolateMotion.execute(motion_a=a, frames=4, method="slerp", easing="linear")
    with pytest.raises(ValueError, match="no frame rate"):
        XNeMoInterpolateMotion.execute(
            motion_a=a.with_(fps=None), frames=4, method="slerp", easing="linear", retime_fps=30.0
        )
    assert "whole number" in XNeMoInterpolateMotion.validate_inputs(keyframes="0, a")
    assert XNeMoInterpolateMotion.validate_inputs(keyframes="0, 4") is True
