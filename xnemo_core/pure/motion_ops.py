"""Interpolation, re-timing and strength of X-NeMo motion (XNEMO_MOTION).

The paper edits motion in the 512-d face-feature space and re-fuses it with the box embedding; the official
`fuse_emb` that should do this raises (it calls an `out_proj` that never exists). Here every synthesized frame is
made the same way: blend the raw face features (lerp or slerp), blend f_rts linearly, and run the motion encoder's
own fusion head (`MotionSequence.fusion`) on the result. Frames that land exactly on an input frame copy that
frame's tokens, features and f_rts bit for bit, so endpoints and keyframes are never re-computed.

Pure room: torch only, no ComfyUI imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import wraps

import torch

from .payloads import MotionSequence

METHODS = ("lerp", "slerp")
MAX_STRENGTH = 2.0  # motion strength above 1 extrapolates (exaggerates); far above it leaves the trained range

Easing = Callable[[torch.Tensor], torch.Tensor]


def _accepts_floats(fn: Easing) -> Callable:
    """Let an easing written for tensors also take and return a plain float."""

    @wraps(fn)
    def wrapper(t):
        if isinstance(t, torch.Tensor):
            return fn(t)
        return float(fn(torch.tensor(float(t), dtype=torch.float64)))

    return wrapper


@_accepts_floats
def linear(t: torch.Tensor) -> torch.Tensor:
    return t


@_accepts_floats
def ease_in(t: torch.Tensor) -> torch.Tensor:
    return t * t


@_accepts_floats
def ease_out(t: torch.Tensor) -> torch.Tensor:
    return 1 - (1 - t) * (1 - t)


@_accepts_floats
def ease_in_out(t: torch.Tensor) -> torch.Tensor:
    # cubic in the first half, its mirror in the second; both halves meet at (0.5, 0.5)
    u = 2 * t
    return torch.where(t < 0.5, 0.5 * u**3, 1 - 0.5 * (2 - u) ** 3)


@_accepts_floats
def smoothstep(t: torch.Tensor) -> torch.Tensor:
    return t * t * (3 - 2 * t)


@_accepts_floats
def smootherstep(t: torch.Tensor) -> torch.Tensor:
    return t**3 * (t * (6 * t - 15) + 10)


@_accepts_floats
def sine_in_out(t: torch.Tensor) -> torch.Tensor:
    return (1 - torch.cos(math.pi * t)) / 2


EASING_FUNCTIONS: dict[str, Callable] = {
    "linear": linear,
    "ease_in": ease_in,
    "ease_out": ease_out,
    "ease_in_out": ease_in_out,
    "smoothstep": smoothstep,
    "smootherstep": smootherstep,
    "sine_in_out": sine_in_out,
}
EASINGS = tuple(EASING_FUNCTIONS)


def ease(name: str, t):
    """Apply the easing curve `name` to t in [0, 1] (float or tensor); every curve maps 0 -> 0 and 1 -> 1."""
    if name not in EASING_FUNCTIONS:
        raise ValueError(f"unknown easing {name!r}; choose one of {', '.join(EASINGS)}")
    return EASING_FUNCTIONS[name](t)


# ---------------------------------------------------------------------------------------------------------------
# vector blends


def _weights(t, like: torch.Tensor) -> torch.Tensor:
    """t as a column [N, 1] (or scalar) in the dtype/device of `like`."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1) if t.ndim else t


def lerp(a: torch.Tensor, b: torch.Tensor, t) -> torch.Tensor:
    """Linear blend of rows: a [N, D], b [N, D], t scalar or [N] -> [N, D]. t=0 gives a, t=1 gives b exactly."""
    w = _weights(t, a)
    return (1 - w) * a + w * b


def slerp(a: torch.Tensor, b: torch.Tensor, t, eps: float = 1e-6) -> torch.Tensor:
    """Spherical blend of rows: the direction moves along the great circle, the norm moves linearly.

    a, b: [N, D]; t: scalar or [N]. Two vectors of equal norm give that norm at every t. Near-parallel pairs
    (where the slerp weights divide by ~0) use a normalised lerp of the directions; near-opposite pairs and
    zero vectors, whose great circle is undefined, fall back to a plain lerp. Computed in float64.
    """
    dtype = a.dtype
    a64, b64 = a.double(), b.double()
    w = _weights(t, a64)
    na = a64.norm(dim=-1, keepdim=True)
    nb = b64.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(torch.float64).tiny
    ua, ub = a64 / na.clamp_min(tiny), b64 / nb.clamp_min(tiny)
    dot = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    parallel = sin_omega < eps
    safe_sin = torch.where(parallel, torch.ones_like(sin_omega), sin_omega)
    wa = torch.where(parallel, 1 - w, torch.sin((1 - w) * omega) / safe_sin)
    wb = torch.where(parallel, w + torch.zeros_like(omega), torch.sin(w * omega) / safe_sin)
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(tiny)
    out = direction * ((1 - w) * na + w * nb)
    degenerate = (parallel & (dot < 0)) | (na <= eps) | (nb <= eps)
    out = torch.where(degenerate, lerp(a64, b64, t), out)
    return out.to(dtype)


def _check_choices(method: str, easing: str = "linear") -> None:
    _blend(method)
    ease(easing, 0.0)


def _blend(method: str) -> Callable:
    if method == "lerp":
        return lerp
    if method == "slerp":
        return slerp
    raise ValueError(f"unknown interpolation method {method!r}; choose one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------------------------------------------------
# re-fusion


def fuse(fusion: torch.nn.Module, face_features: torch.Tensor, f_rts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Run the motion encoder's fusion head: features [N, 512] + f_rts [N, 3] -> tokens shaped like `like` [N, 32, 16].

    This is what the official `fuse_emb` meant to do. Runs without autograd on the head's own device and dtype
    (the payload keeps it fp32 on CPU); the result comes back in `like`'s dtype and device.
    """
    param = next(iter(fusion.parameters()), None)
    if param is None:
        param = next(iter(fusion.buffers()), None)
    device = param.device if param is not None else face_features.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with torch.no_grad():
        tokens = fusion(face_features.to(device, dtype), f_rts.to(device, dtype))
    if tuple(tokens.shape) != (face_features.shape[0], *like.shape[1:]):
        raise ValueError(
            f"the motion fusion head returned tokens of shape {tuple(tokens.shape)}, expected "
            f"{(face_features.shape[0], *like.shape[1:])}; re-encode the motion with Encode Motion from the same "
            f"X-NeMo model"
        )
    return tokens.to(like.device, like.dtype)


# ---------------------------------------------------------------------------------------------------------------
# the one resampler every public operation is built on


def _require_fusion(motion: MotionSequence, name: str) -> torch.nn.Module:
    if motion.fusion is None:
        raise ValueError(
            f"{name} carries no fusion head, so its motion cannot be re-fused after blending; "
            "encode it with X-NeMo Encode Motion (which attaches the motion encoder's fusion head)"
        )
    return motion.fusion


def _check_index(index: int, motion: MotionSequence, name: str) -> int:
    frames = motion.frames
    if not -frames <= index < frames:
        raise ValueError(
            f"{name} {index} is out of range for a motion of {frames} frames; use 0..{frames - 1} "
            f"(or -{frames}..-1 to count from the end, -1 = last frame)"
        )
    return index % frames


def _check_frames(frames: int, what: str) -> None:
    if frames < 2:
        raise ValueError(f"{what} must be at least 2 (both end frames included), got {frames}; raise it")


def _resample(
    a: MotionSequence,
    ia: torch.Tensor,
    b: MotionSequence,
    ib: torch.Tensor,
    w: torch.Tensor,
    method: str,
    fusion: torch.nn.Module,
    fps: float | None,
) -> MotionSequence:
    """Output frame k blends a's frame ia[k] with b's frame ib[k] at weight w[k] (0 = a, 1 = b).

    Rows with w == 0 or w == 1 copy the source frame exactly; only the rows in between go through the fusion head.
    """
    blend = _blend(method)
    w = w.to(torch.float64)
    at_a, at_b = w <= 0, w >= 1
    mid = ~(at_a | at_b)

    # 1. exact copies of the source frames, then overwrite the rows in between
    tokens = torch.where(at_b.view(-1, 1, 1), b.tokens[ib], a.tokens[ia]).clone()
    feats = torch.where(at_b.view(-1, 1), b.face_features[ib], a.face_features[ia]).clone()
    f_rts = torch.where(at_b.view(-1, 1), b.f_rts[ib], a.f_rts[ia]).clone()
    if mid.any():
        wm = w[mid]
        feats[mid] = blend(a.face_features[ia[mid]], b.face_features[ib[mid]], wm).to(feats.dtype)
        f_rts[mid] = lerp(a.f_rts[ia[mid]].double(), b.f_rts[ib[mid]].double(), wm).to(f_rts.dtype)
        # 2. re-fuse the blended feature with its blended box parameter (the fixed `fuse_emb` path)
        tokens[mid] = fuse(fusion, feats[mid], f_rts[mid], like=tokens)

    # 3. side data: boxes move linearly; a blended frame counts as "face found" only if both sources had one
    boxes = None
    if a.boxes is not None and b.boxes is not None:
        boxes = lerp(a.boxes[ia].double(), b.boxes[ib].double(), w).to(a.boxes.dtype)
        boxes[at_a], boxes[at_b] = a.boxes[ia[at_a]], b.boxes[ib[at_b]]
    face_found = None
    if a.face_found is not None and b.face_found is not None:
        fa, fb = a.face_found[ia].bool(), b.face_found[ib].bool()
        face_found = torch.where(at_a, fa, torch.where(at_b, fb, fa & fb))
    return MotionSequence(
        tokens=tokens,
        face_features=feats,
        f_rts=f_rts,
        fusion=fusion,
        boxes=boxes,
        face_found=face_found,
        fps=fps,
        crop_scale=a.crop_scale if a.crop_scale == b.crop_scale else None,
    )


def _check_compatible(a: MotionSequence, b: MotionSequence) -> None:
    if a.tokens.shape[1:] != b.tokens.shape[1:] or a.face_features.shape[1:] != b.face_features.shape[1:]:
        raise ValueError(
            f"the two motions do not match: tokens {tuple(a.tokens.shape[1:])} vs {tuple(b.tokens.shape[1:])}, "
            f"features {tuple(a.face_features.shape[1:])} vs {tuple(b.face_features.shape[1:])}; "
            "encode both with the same X-NeMo model"
        )


# ---------------------------------------------------------------------------------------------------------------
# public operations


def interpolate(
    a: MotionSequence,
    b: MotionSequence,
    frames: int,
    method: str = "slerp",
    easing: str = "linear",
    a_index: int = -1,
    b_index: int = 0,
) -> MotionSequence:
    """A transition of `frames` frames from frame `a_index` of `a` to frame `b_index` of `b`, both ends included.

    The first output frame is a's frame and the last is b's frame, bit for bit; frames in between blend the face
    features (`method`), f_rts and boxes at eased time and are re-fused with a's fusion head (b's if a has none).
    The result keeps a's fps (or b's).
    """
    _check_frames(frames, "frames")
    _check_choices(method, easing)
    _check_compatible(a, b)
    fusion = a.fusion if a.fusion is not None else _require_fusion(b, "neither motion")
    ia = _check_index(a_index, a, "a_index")
    ib = _check_index(b_index, b, "b_index")
    t = ease(easing, torch.linspace(0, 1, frames, dtype=torch.float64))
    t[0], t[-1] = 0.0, 1.0
    idx_a = torch.full((frames,), ia, dtype=torch.long)
    idx_b = torch.full((frames,), ib, dtype=torch.long)
    return _resample(a, idx_a, b, idx_b, t, method, fusion, a.fps if a.fps is not None else b.fps)


def keyframes(
    motion: MotionSequence,
    indices: Sequence[int],
    frames_between: int,
    method: str = "slerp",
    easing: str = "linear",
) -> MotionSequence:
    """Play through the given frames of one motion, inserting `frames_between` blended frames between each pair.

    Output length is len(indices) + (len(indices) - 1) * frames_between; every keyframe is copied exactly and
    each segment is eased on its own. Indices may repeat (a hold) or go backwards; negative ones count from the end.
    """
    if len(indices) < 2:
        raise ValueError(f"keyframes needs at least 2 frame indices, got {list(indices)}; give e.g. '0, 40, 80'")
    if frames_between < 0:
        raise ValueError(f"frames_between must be 0 or more, got {frames_between}")
    _check_choices(method, easing)
    fusion = _require_fusion(motion, "the motion")
    keys = [_check_index(int(i), motion, "keyframe index") for i in indices]
    seg = ease(easing, torch.linspace(0, 1, frames_between + 2, dtype=torch.float64))[:-1]
    seg[0] = 0.0
    ia, ib, w = [], [], []
    for start, end in zip(keys[:-1], keys[1:]):
        ia += [start] * len(seg)
        ib += [end] * len(seg)
        w.append(seg)
    ia.append(keys[-1])
    ib.append(keys[-1])
    w.append(torch.zeros(1, dtype=torch.float64))
    return _resample(motion, torch.tensor(ia), motion, torch.tensor(ib), torch.cat(w), method, fusion, motion.fps)


def retime(
    motion: MotionSequence, fps: float | None = None, frames: int | None = None, method: str = "slerp"
) -> MotionSequence:
    """Resample a motion in time, keeping its duration: to a new frame rate or to a new frame count.

    fps: new frame rate; the frame count becomes round(F * fps / motion.fps) (needs motion.fps).
    frames: new frame count; the fps becomes motion.fps * frames / F (stays None when unknown).
    Output frame j sits at source position j * (F - 1) / (frames - 1), so the first and last frames are copied
    exactly, as is any frame that lands on a source frame; the others blend their two neighbours (`method` for
    features, linear for f_rts and boxes) and are re-fused.
    """
    if (fps is None) == (frames is None):
        raise ValueError("retime needs exactly one of fps (new frame rate) or frames (new frame count)")
    source = motion.frames
    if source < 2:
        raise ValueError(f"retime needs a motion of at least 2 frames, got {source}")
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be above 0, got {fps}; use 0 in the node to keep the frame rate")
        if motion.fps is None or motion.fps <= 0:
            raise ValueError(
                "the motion has no frame rate, so it cannot be retimed to a new fps; set frames instead, "
                "or encode it from a video loader that reports fps"
            )
        frames = int(round(source * fps / motion.fps))
        _check_frames(frames, f"the retimed frame count (round({source} * {fps} / {motion.fps}))")
        new_fps = float(fps)
    else:
        _check_frames(frames, "frames")
        new_fps = motion.fps * frames / source if motion.fps else None
    _check_choices(method)
    fusion = _require_fusion(motion, "the motion")

    # positions in float64, snapped to source frames where they land on one (up to rounding)
    pos = torch.arange(frames, dtype=torch.float64) * (source - 1) / (frames - 1)
    near = pos.round()
    pos = torch.where((pos - near).abs() < 1e-9, near, pos)
    pos[0], pos[-1] = 0.0, float(source - 1)
    ia = pos.floor().long().clamp(max=source - 1)
    ib = (ia + 1).clamp(max=source - 1)
    w = pos - ia.double()
    return _resample(motion, ia, motion, ib, w, method, fusion, new_fps)


def parse_indices(text: str) -> list[int]:
    """'0, 40, -1' -> [0, 40, -1]; raises ValueError naming the bad item."""
    out = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"keyframe {item!r} is not a whole number; write frame indices like '0, 40, 80'") from None
    return out


# ---------------------------------------------------------------------------------------------------------------
# motion strength


def toward_own_motion(
    driving: MotionSequence, own: MotionSequence, strength: float, head_strength: float, method: str = "slerp"
) -> MotionSequence:
    """Blend the driving motion towards the portrait's own motion ("motion strength").

    `own` is the portrait's own motion, one frame: its 512-d face feature, the neutral box parameter [0, 0, 1] (the
    portrait's own head position and size) and their tokens, as the negative branch uses them. Per driving frame:
    - the face feature goes from the portrait's (strength 0) to the driving frame's (1) with `method`;
    - f_rts, the head position and zoom, goes from [0, 0, 1] (head_strength 0) to the driving frame's (1) linearly;
    and the pair is re-fused with the fusion head (the driving motion's, else `own`'s). Above 1 both extrapolate,
    which exaggerates. Frames whose feature and f_rts equal the driving frame's, or the portrait's own, copy those
    tokens: strengths 1/1 give the driving motion and 0/0 the portrait's own motion on every frame, bit for bit.

    The face feature describes the whole face at once (expression, gaze, mouth together): there is no eyes-only or
    mouth-only strength. With f_rts_mode 'official' every frame's f_rts is already [0, 0, 1], so head_strength has
    no effect.
    """
    blend = _blend(method)
    if own.frames != 1:
        raise ValueError(f"the portrait's own motion must be one frame, got {own.frames}")
    _check_compatible(driving, own)
    for name, value in (("motion strength", strength), ("head motion strength", head_strength)):
        if not 0.0 <= value <= MAX_STRENGTH:  # also refuses NaN
            raise ValueError(
                f"{name} is {value}: use 0 (the portrait's own) to 1 (the driving video), up to "
                f"{MAX_STRENGTH:g} to exaggerate"
            )
    frames = driving.frames
    own_feats = own.face_features.to(driving.face_features.dtype).expand(frames, -1)
    own_rts = own.f_rts.to(driving.f_rts.dtype).expand(frames, -1)

    if strength == 1.0:
        feats = driving.face_features.clone()
    elif strength == 0.0:
        feats = own_feats.clone()
    else:
        feats = blend(own_feats, driving.face_features, strength).to(driving.face_features.dtype)
    if head_strength == 1.0:
        f_rts = driving.f_rts.clone()
    elif head_strength == 0.0:
        f_rts = own_rts.clone()
    else:
        f_rts = lerp(own_rts.double(), driving.f_rts.double(), head_strength).to(driving.f_rts.dtype)

    same_as_driving = (feats == driving.face_features).all(dim=1) & (f_rts == driving.f_rts).all(dim=1)
    same_as_own = (feats == own_feats).all(dim=1) & (f_rts == own_rts).all(dim=1) & ~same_as_driving
    tokens = driving.tokens.clone()
    tokens[same_as_own] = own.tokens.to(tokens.dtype)
    rest = ~(same_as_driving | same_as_own)
    if rest.any():
        fusion = driving.fusion if driving.fusion is not None else _require_fusion(own, "the portrait's own motion")
        tokens[rest] = fuse(fusion, feats[rest], f_rts[rest], like=tokens)
    return driving.with_(tokens=tokens, face_features=feats, f_rts=f_rts)
