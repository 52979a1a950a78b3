"""Interpolate Motion: transitions between two motions, keyframe paths through one, and re-timing."""

from __future__ import annotations

from comfy_api.latest import io

from ..xnemo_core.pure.motion_ops import EASINGS, METHODS, interpolate, parse_indices, retime
from ..xnemo_core.pure.motion_ops import keyframes as keyframe_path  # `keyframes` is also an input id
from .checks import check_named
from .types import CATEGORY, XNeMoMotion


class XNeMoInterpolateMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoInterpolateMotion",
            display_name="X-NeMo Interpolate Motion",
            category=CATEGORY,
            description="Blend X-NeMo motion in face-feature space: a transition from motion_a to motion_b, a path "
            "through keyframes of motion_a, and/or a change of frame rate.",
            inputs=[
                XNeMoMotion.Input(
                    "motion_a",
                    tooltip=(
                        "Motion from X-NeMo Encode Motion. A transition starts at its last frame; keyframes index "
                        "into it."
                    ),
                ),
                XNeMoMotion.Input(
                    "motion_b",
                    optional=True,
                    tooltip=(
                        "Optional second motion. When connected, the output is a transition from motion_a's last "
                        "frame to motion_b's first frame."
                    ),
                ),
                io.Int.Input(
                    "frames",
                    default=16,
                    min=2,
                    max=10000,
                    tooltip=(
                        "Frames per transition, both end frames included: the whole output with motion_b, each "
                        "keyframe-to-keyframe segment with keyframes."
                    ),
                ),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default="slerp",
                    tooltip=(
                        "How face features are blended: slerp keeps the feature's length (steadier expressions), "
                        "lerp is a straight line."
                    ),
                ),
                io.Combo.Input(
                    "easing",
                    options=list(EASINGS),
                    default="ease_in_out",
                    tooltip=(
                        "Speed curve of each transition; linear moves at constant speed, ease_* start and/or end "
                        "slowly."
                    ),
                ),
                io.String.Input(
                    "keyframes",
                    optional=True,
                    default="",
                    placeholder="0, 40, 80",
                    tooltip=(
                        "Comma-separated frame indices into motion_a (negative counts from the end). Used when "
                        "motion_b is not connected: the output moves through these frames in order."
                    ),
                ),
                io.Float.Input(
                    "retime_fps",
                    optional=True,
                    default=0.0,
                    min=0.0,
                    max=240.0,
                    step=0.01,
                    tooltip=(
                        "Resample the result to this frame rate keeping its duration (needs a known fps). 0 keeps "
                        "the frame rate."
                    ),
                ),
            ],
            outputs=[
                XNeMoMotion.Output(
                    display_name="motion",
                    tooltip=(
                        "The new motion, re-fused with the encoder's fusion head; connect it to X-NeMo Reference "
                        "Condition."
                    ),
                ),
            ],
            is_experimental=True,
        )

    @classmethod
    def validate_inputs(
        cls, keyframes: str | None = None, method: str | None = None, easing: str | None = None
    ) -> bool | str:
        # Named inputs only: ComfyUI's own checks stay on for the rest (see nodes/checks.py).
        checked = check_named(cls, method=method, easing=easing)
        if checked is not True:
            return checked
        try:
            indices = parse_indices(keyframes or "")
        except ValueError as error:
            return str(error)
        if len(indices) == 1:
            return f"keyframes needs at least 2 indices, got '{keyframes}'; e.g. '0, 40, 80'"
        return True

    @classmethod
    def execute(
        cls,
        motion_a,
        frames: int,
        method: str,
        easing: str,
        motion_b=None,
        keyframes: str = "",
        retime_fps: float = 0.0,
    ) -> io.NodeOutput:
        indices = parse_indices(keyframes or "")
        if motion_b is not None:
            motion = interpolate(motion_a, motion_b, frames, method=method, easing=easing)
        elif indices:
            motion = keyframe_path(motion_a, indices, frames - 2, method, easing)
        elif retime_fps > 0:
            motion = motion_a
        else:
            raise ValueError(
                "nothing to interpolate: connect motion_b, give keyframes (e.g. '0, 40, 80'), "
                "or set retime_fps to resample motion_a"
            )
        if retime_fps > 0:
            motion = retime(motion, fps=retime_fps, method=method)
        return io.NodeOutput(motion)


NODES = [XNeMoInterpolateMotion]
