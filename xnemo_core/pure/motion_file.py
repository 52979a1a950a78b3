"""XNEMO_MOTION on disk: one `.safetensors` file per motion (Save Motion / Load Motion).

A saved motion is reused without the driving video or the motion encoder: sampling reads its tokens, and Interpolate
Motion and the motion strength re-fuse edited face features with the fusion head stored beside them.

Tensors: `tokens` [F, 32, 16], `face_features` [F, 512], `f_rts` [F, 3], optional `boxes` [F, 4] and `face_found`
[F] (bool), and `fusion.<name>` for each tensor of the fusion head (when the motion has one).
Header metadata (strings): `format` = "xnemo_motion", `format_version`, `fps` and `crop_scale` ("" when unknown),
`fusion_sizes` (JSON: the head's dimensions). Values are stored as they are, so a round trip is exact.

Pure room: torch and safetensors only, no ComfyUI imports.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import XNeMoError
from .motion_encoder import MotionFusion
from .payloads import MotionSequence

FORMAT = "xnemo_motion"
FORMAT_VERSION = 1
EXTENSION = ".safetensors"
FUSION_PREFIX = "fusion."
_FIELDS = ("tokens", "face_features", "f_rts", "boxes", "face_found")
_REQUIRED = ("tokens", "face_features", "f_rts")


class MotionFileError(XNeMoError):
    """A motion file that cannot be read as an X-NeMo motion of this format version."""


def _optional_float(value: str, name: str, path: str) -> float | None:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise MotionFileError(
            f"{os.path.basename(path)}: its {name} entry {value!r} is not a number; the file is "
            "damaged, save the motion again with X-NeMo Save Motion"
        ) from None


def save_motion(motion: MotionSequence, path: str) -> None:
    """Write `motion` to `path` (a new .safetensors file)."""
    tensors = {name: getattr(motion, name).contiguous() for name in _FIELDS if getattr(motion, name) is not None}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "fps": "" if motion.fps is None else repr(float(motion.fps)),
        "crop_scale": "" if motion.crop_scale is None else repr(float(motion.crop_scale)),
    }
    if motion.fusion is not None:
        if not hasattr(motion.fusion, "fusion_sizes"):
            raise MotionFileError(
                f"the motion's fusion head ({type(motion.fusion).__name__}) cannot be saved; encode "
                "the motion with X-NeMo Encode Motion"
            )
        metadata["fusion_sizes"] = json.dumps(motion.fusion.fusion_sizes(), sort_keys=True)
        tensors.update({FUSION_PREFIX + k: v.detach().contiguous() for k, v in motion.fusion.state_dict().items()})
    save_file(tensors, path, metadata=metadata)


def read_header(path: str) -> dict:
    """The safetensors header metadata of `path` (reads only the header); {} when it is not a safetensors file."""
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 100_000_000:
                return {}
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def is_motion_file(path: str) -> bool:
    """Whether `path` says it is an X-NeMo motion (any format version): what Load Motion lists."""
    return path.endswith(EXTENSION) and read_header(path).get("format") == FORMAT


def load_motion(path: str) -> MotionSequence:
    """Read a motion written by `save_motion`; MotionFileError says what is wrong and what to do."""
    name = os.path.basename(path)
    meta = read_header(path)
    if meta.get("format") != FORMAT:
        raise MotionFileError(
            f"{name} is not an X-NeMo motion file (its header has no 'format: {FORMAT}'); pick a "
            "file written by X-NeMo Save Motion"
        )
    version = meta.get("format_version", "")
    if version != str(FORMAT_VERSION):
        raise MotionFileError(
            f"{name} is an X-NeMo motion of format version {version or '(none)'}, but this version "
            f"of the pack reads version {FORMAT_VERSION}; re-encode the driving video and save it "
            "again, or use the pack version that wrote it"
        )
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise MotionFileError(
            f"{name} is damaged and cannot be read ({err}); save the motion again with X-NeMo Save Motion"
        ) from None
    missing = [k for k in _REQUIRED if k not in tensors]
    if missing:
        raise MotionFileError(f"{name} lacks {', '.join(missing)}; the file is damaged, save the motion again")

    fusion = None
    fusion_state = {k[len(FUSION_PREFIX) :]: v for k, v in tensors.items() if k.startswith(FUSION_PREFIX)}
    if fusion_state:
        try:
            fusion = MotionFusion(**json.loads(meta.get("fusion_sizes", "")))
            fusion.load_state_dict(fusion_state, strict=True)
        except (ValueError, TypeError, RuntimeError) as err:
            raise MotionFileError(
                f"{name}: its fusion head does not load ({err}); the file is damaged, save the motion again"
            ) from None
        fusion = fusion.eval().requires_grad_(False)
    fields = {k: tensors.get(k) for k in _FIELDS}
    if fields["face_found"] is not None:
        fields["face_found"] = fields["face_found"].to(torch.bool)
    try:
        return MotionSequence(
            **fields,
            fusion=fusion,
            fps=_optional_float(meta.get("fps", ""), "fps", path),
            crop_scale=_optional_float(meta.get("crop_scale", ""), "crop_scale", path),
        )
    except ValueError as err:
        raise MotionFileError(f"{name}: {err}; the file is damaged, save the motion again") from None
