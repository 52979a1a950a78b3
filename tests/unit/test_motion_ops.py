"""Motion interpolation and re-timing (xnemo_core.pure.motion_ops), with a stand-in fusion head built here."""

from __future__ import annotations

import math

import pytest
import torch

from xnemo_pack.xnemo_core.pure import motion_ops
from xnemo_pack.xnemo_core.pure.motion_ops import (
    EASINGS,
    ease,
    interpolate,
    keyframes,
    lerp,
    parse_indices,
    retime,
    slerp,
)
from xnemo_pack.xnemo_core.pure.payloads import MotionSequence


class StandInFusion(torch.nn.Module):
    """Same shape contract as the motion encoder's fusion: box embedding, concat, projection, tokens + fixed code."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.bbox_proj = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
        self.final_proj = torch.nn.Linear(576, 512)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        self.register_buffer("pe", torch.randn(1, 32, 16, generator=generator))

    def forward(self, face_features: torch.Tensor, f_rts: torch.Tensor) -> torch.Tensor:
        x = torch.cat([face_features, self.bbox_proj(f_rts)], dim=-1)
        return self.final_proj(x).reshape(-1, 32, 16) + self.pe  # [N, 512] -> [N, 32, 16]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


def make_motion(gen: torch.Generator, frames: int = 6, fps: float | None = 25.0, fusion=None) -> MotionSequence:
    fusion = fusion or StandInFusion(gen)
    feats = torch.randn(frames, 512, generator=gen)
    f_rts = torch.randn(frames, 3, generator=gen)
    with torch.no_grad():
        # encoder tokens carry a little "encoder noise" so a re-fused endpoint would differ from a copied one
        tokens = fusion(feats, f_rts) + 1e-7 * torch.randn(frames, 32, 16, generator=gen)
    boxes = torch.rand(frames, 4, generator=gen) * 100
    return MotionSequence(
        tokens=tokens,
        face_features=feats,
        f_rts=f_rts,
        fusion=fusion,
        boxes=boxes,
        face_found=torch.ones(frames, dtype=torch.bool),
        fps=fps,
    )


# --- easing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EASINGS)
def test_easing_maps_ends_and_is_monotone(name):
    assert ease(name, 0.0) == 0.0 and ease(name, 1.0) == 1.0
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    y = ease(name, t)
    assert y[0] == 0 and y[-1] == 1
    assert torch.all(y[1:] - y[:-1] >= -1e-12), f"{name} is not monotone"
    assert torch.all((y >= 0) & (y <= 1))


def test_easings_include_the_documented_names():
    for name in ("linear", "ease_in", "ease_out", "ease_in_out", "smoothstep"):
        assert name in EASINGS


# --- blends -----------------------------------------------------------------------------------------------------


def test_slerp_keeps_norms_when_equal(gen):
    a = torch.randn(8, 512, generator=gen)
    b = torch.randn(8, 512, generator=gen)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)
    for t in torch.linspace(0, 1, 11):
        out = slerp(a, b, float(t))
        torch.testing.assert_close(out.norm(dim=-1), a.norm(dim=-1), rtol=1e-5, atol=0)
    # lerp, by contrast, shrinks the norm mid-way (this is why slerp exists)
    assert torch.all(lerp(a, b, 0.5).norm(dim=-1) < 0.9 * a.norm(dim=-1))


def test_slerp_magnitude_is_linear_and_direction_on_the_arc(gen):
    a = torch.randn(4, 512, generator=gen)
    b = 3 * torch.randn(4, 512, generator=gen)
    out = slerp(a, b, 0.25)
    torch.testing.assert_close(out.norm(dim=-1), 0.75 * a.norm(dim=-1) + 0.25 * b.norm(dim=-1), rtol=1e-5, atol=0)
    ua, ub, uo = (v / v.norm(dim=-1, keepdim=True) for v in (a, b, out))
    angle = lambda x, y: torch.acos((x * y).sum(-1).clamp(-1, 1))  # noqa: E731
    torch.testing.assert_close(angle(ua, uo), 0.25 * angle(ua, ub), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slerp(a, b, 0.0), a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(slerp(a, b, 1.0), b, rtol=1e-6, atol=1e-6)


def test_slerp_handles_parallel_opposite_and_zero_vectors(gen):
    a = torch.randn(1, 512, generator=gen)
    cases = [a, a * (1 + 1e-9), 2 * a, -a, torch.zeros_like(a)]
    for b in cases:
        out = slerp(a, b, torch.tensor([0.3]))
        assert torch.isfinite(out).all()
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slerp(a, -a, 0.5), torch.zeros_like(a), rtol=0, atol=1e-6)


# --- interpolate --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", motion_ops.METHODS)
@pytest.mark.parametrize("easing", EASINGS)
def test_interpolate_endpoints_are_bitwise_copies(gen, method, easing):
    a = make_motion(gen)
    b = make_motion(gen, frames=4, fusion=a.fusion)
    out = interpolate(a, b, 7, method=method, easing=easing)
    assert out.frames == 7 and out.fps == a.fps and out.fusion is a.fusion
    assert torch.equal(out.tokens[0], a.tokens[-1]) and torch.equal(out.tokens[-1], b.tokens[0])
    assert torch.equal(out.face_features[0], a.face_features[-1])
    assert torch.equal(out.face_features[-1], b.face_features[0])
    assert torch.equal(out.f_rts[0], a.f_rts[-1]) and torch.equal(out.f_rts[-1], b.f_rts[0])
    assert torch.equal(out.boxes[0], a.boxes[-1]) and torch.equal(out.boxes[-1], b.boxes[0])
    assert out.tokens.dtype == a.tokens.dtype and torch.isfinite(out.tokens).all()


def test_interpolate_middle_frames_are_refused_blends(gen):
    a = make_motion(gen)
    b = make_motion(gen, fusion=a.fusion)
    out = interpolate(a, b, 5, method="lerp", easing="linear", a_index=2, b_index=3)
    assert torch.equal(out.tokens[0], a.tokens[2]) and torch.equal(out.tokens[-1], b.tokens[3])
    feat = 0.5 * a.face_features[2] + 0.5 * b.face_features[3]
    rts = 0.5 * a.f_rts[2] + 0.5 * b.f_rts[3]
    torch.testing.assert_close(out.face_features[2], feat)
    torch.testing.assert_close(out.tokens[2], a.fusion(feat[None], rts[None])[0].detach())
    # frames are distinct and move away from a toward b
    d_a = [(out.face_features[i] - a.face_features[2]).norm() for i in range(5)]
    assert all(x < y for x, y in zip(d_a, d_a[1:]))


def test_interpolate_does_not_mutate_inputs(gen):
    a = make_motion(gen)
    b = make_motion(gen, fusion=a.fusion)
    before = [t.clone() for t in (a.tokens, a.face_features, a.f_rts, b.tokens, b.face_features)]
    out = interpolate(a, b, 6)
    out.tokens.add_(1)
    after = [a.tokens, a.face_features, a.f_rts, b.tokens, b.face_features]
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_interpolate_errors(gen):
    a = make_motion(gen)
    b = make_motion(gen, fusion=a.fusion)
    with pytest.raises(ValueError, match="at least 2"):
        interpolate(a, b, 1)
    with pytest.raises(ValueError, match="a_index 6 is out of range.*6 frames"):
        interpolate(a, b, 4, a_index=6)
    with pytest.raises(ValueError, match="b_index -7"):
        interpolate(a, b, 4, b_index=-7)
    with pytest.raises(ValueError, match="fusion head.*Encode Motion"):
        interpolate(a.with_(fusion=None), b.with_(fusion=None), 4)
    with pytest.raises(ValueError, match="unknown interpolation method 'cubic'.*lerp, slerp"):
        interpolate(a, b, 4, method="cubic")
    with pytest.raises(ValueError, match="unknown easing 'bounce'"):
        interpolate(a, b, 4, easing="bounce")


# --- keyframes ----------------------------------------------------------------------------------------------------


def test_keyframes_copy_keys_and_fill_between(gen):
    m = make_motion(gen, frames=10)
    keys = [0, 5, -1, 5]
    out = keyframes(m, keys, frames_between=3, method="slerp", easing="ease_in_out")
    assert out.frames == len(keys) + 3 * (len(keys) - 1)
    for k, src in enumerate(keys):
        assert torch.equal(out.tokens[4 * k], m.tokens[src])
        assert torch.equal(out.face_features[4 * k], m.face_features[src])
    assert not torch.equal(out.tokens[1], m.tokens[0]) and not torch.equal(out.tokens[1], m.tokens[5])
    assert keyframes(m, [2, 7], frames_between=0).frames == 2


def test_keyframes_errors(gen):
    m = make_motion(gen, frames=10)
    with pytest.raises(ValueError, match="at least 2 frame indices"):
        keyframes(m, [3], 4)
    with pytest.raises(ValueError, match="keyframe index 10 is out of range"):
        keyframes(m, [0, 10], 4)
    with pytest.raises(ValueError, match="frames_between"):
        keyframes(m, [0, 4], -1)
    with pytest.raises(ValueError, match="fusion head"):
        keyframes(m.with_(fusion=None), [0, 4], 2)


def test_parse_indices():
    assert parse_indices(" 0, 40 ,-1,, ") == [0, 40, -1]
    assert parse_indices("") == []
    with pytest.raises(ValueError, match="'4.5' is not a whole number"):
        parse_indices("0, 4.5")


# --- retime -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, old_fps, new_fps", [(10, 25.0, 30.0), (25, 25.0, 12.5), (9, 24.0, 60.0), (7, 30.0, 29.97)]
)
def test_retime_fps_keeps_duration_and_ends(gen, frames, old_fps, new_fps):
    m = make_motion(gen, frames=frames, fps=old_fps)
    out = retime(m, fps=new_fps)
    assert out.frames == round(frames * new_fps / old_fps) and out.fps == new_fps
    assert abs(out.frames / out.fps - frames / old_fps) <= 0.5 / new_fps + 1e-9  # rounding to whole frames
    assert torch.equal(out.tokens[0], m.tokens[0]) and torch.equal(out.tokens[-1], m.tokens[-1])
    assert torch.equal(out.boxes[0], m.boxes[0]) and torch.equal(out.boxes[-1], m.boxes[-1])
    assert torch.isfinite(out.tokens).all()


def test_retime_frames_keeps_duration_exactly_and_copies_aligned_frames(gen):
    m = make_motion(gen, frames=6, fps=25.0)
    out = retime(m, frames=11)  # positions 0, 0.5, 1, ... 5: every other frame is a source frame
    assert math.isclose(out.frames / out.fps, m.frames / m.fps)
    for j in range(0, 11, 2):
        assert torch.equal(out.tokens[j], m.tokens[j // 2])
    torch.testing.assert_close(out.f_rts[1], 0.5 * (m.f_rts[0] + m.f_rts[1]))
    assert retime(m.with_(fps=None), frames=4).fps is None


def test_retime_errors(gen):
    m = make_motion(gen, frames=6, fps=25.0)
    with pytest.raises(ValueError, match="fps must be above 0"):
        retime(m, fps=0)
    with pytest.raises(ValueError, match="exactly one"):
        retime(m)
    with pytest.raises(ValueError, match="no frame rate"):
        retime(m.with_(fps=None), fps=30)
    with pytest.raises(ValueError, match="at least 2"):
        retime(m, fps=1.0)  # round(6 * 1 / 25) = 0 frames
    with pytest.raises(ValueError, match="fusion head"):
        retime(m.with_(fusion=None), frames=12)


# --- motion strength (towards the portrait's own motion) ---------------------------------------------------------


def own_motion(gen: torch.Generator, fusion) -> MotionSequence:
    """The portrait's own motion as Reference Condition makes it: one face feature, f_rts [0, 0, 1], its tokens."""
    feats = torch.randn(1, 512, generator=gen)
    f_rts = torch.tensor([[0.0, 0.0, 1.0]])
    with torch.no_grad():
        tokens = fusion(feats, f_rts) + 1e-7 * torch.randn(1, 32, 16, generator=gen)
    return MotionSequence(tokens=tokens, face_features=feats, f_rts=f_rts, fusion=fusion)


def test_motion_strength_endpoints_are_exact(gen):
    driving = make_motion(gen)
    own = own_motion(gen, driving.fusion)
    full = motion_ops.toward_own_motion(driving, own, 1.0, 1.0)
    assert torch.equal(full.tokens, driving.tokens) and torch.equal(full.face_features, driving.face_features)
    assert torch.equal(full.f_rts, driving.f_rts) and full.boxes is driving.boxes and full.fps == driving.fps
    none = motion_ops.toward_own_motion(driving, own, 0.0, 0.0)
    assert torch.equal(none.tokens, own.tokens.expand(driving.frames, -1, -1))
    assert torch.equal(none.face_features, own.face_features.expand(driving.frames, -1))
    assert torch.equal(none.f_rts, own.f_rts.expand(driving.frames, -1))


def test_motion_strength_scales_expression_and_head_separately(gen):
    driving = make_motion(gen)  # f_rts of every frame differs from [0, 0, 1], as in f_rts_mode 'relative'
    own = own_motion(gen, driving.fusion)
    frames = driving.frames
    expression_only = motion_ops.toward_own_motion(driving, own, 1.0, 0.0)
    assert torch.equal(expression_only.face_features, driving.face_features)
    assert torch.equal(expression_only.f_rts, own.f_rts.expand(frames, -1))
    head_only = motion_ops.toward_own_motion(driving, own, 0.0, 1.0)
    assert torch.equal(head_only.face_features, own.face_features.expand(frames, -1))
    assert torch.equal(head_only.f_rts, driving.f_rts)
    for out in (expression_only, head_only):  # re-fused with the fusion head, like any edited motion
        with torch.no_grad():
            assert torch.equal(out.tokens, driving.fusion(out.face_features, out.f_rts))
        assert not torch.equal(out.tokens, driving.tokens)

    half = motion_ops.toward_own_motion(driving, own, 0.5, 0.25)
    assert torch.allclose(half.face_features, slerp(own.face_features.expand(frames, -1), driving.face_features, 0.5))
    assert torch.allclose(half.f_rts, own.f_rts + 0.25 * (driving.f_rts - own.f_rts), atol=1e-6)
    more = motion_ops.toward_own_motion(driving, own, 1.5, 1.0, method="lerp")  # above 1 exaggerates
    assert torch.allclose(
        more.face_features, own.face_features + 1.5 * (driving.face_features - own.face_features), atol=1e-5
    )


def test_motion_strength_with_official_f_rts(gen):
    """f_rts_mode 'official' motion carries [0, 0, 1] on every frame: the head strength changes nothing, and
    expression strength 0 gives the portrait's own tokens exactly."""
    driving = make_motion(gen)
    driving = driving.with_(f_rts=torch.tensor([[0.0, 0.0, 1.0]]).expand(driving.frames, -1).clone())
    own = own_motion(gen, driving.fusion)
    assert torch.equal(motion_ops.toward_own_motion(driving, own, 1.0, 0.0).tokens, driving.tokens)
    assert torch.equal(
        motion_ops.toward_own_motion(driving, own, 0.0, 0.7).tokens, own.tokens.expand(driving.frames, -1, -1)
    )


@pytest.mark.parametrize("strength, head", [(-0.1, 1.0), (1.0, 2.5), (float("nan"), 1.0)])
def test_motion_strength_out_of_range(gen, strength, head):
    driving = make_motion(gen)
    with pytest.raises(ValueError, match=r"strength is .*: use 0 \(the portrait's own\) to 1 \(the driving video\)"):
        motion_ops.toward_own_motion(driving, own_motion(gen, driving.fusion), strength, head)
