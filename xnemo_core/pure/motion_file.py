"""XNEMO_MOTION on disk: one `.safetensors` file per motion (Save Motion / Load Motion).

A saved motion is reused without the driving video or the motion encoder: sampling reads its tokens, and Interpolate
Motion and the motion strength re-fuse edited face features with the fusion head stored beside them.

Tensors: `tokens` [F, 32, 16], `face_features` [F, 512], `f_rts` [F, 3], optional `boxes` [F, 4] and `face_found`
[F] (bool), and `fusion.<name>` for each tensor of the fusion head (when the motion has one).
Header metadata (strings): `format` = "xnemo_motion", `format_version`, `fps` and `crop_scale` ("" when unknown),
`fusion_sizes` (JSON: the head's dimensions). Values are stored as they are, so a round trip is exact.

Motion files are shared, so they are read as untrusted input: the header (capped at `MAX_HEADER_BYTES`) is checked
against the model's known sizes (`expected_tensors`: names, dtypes, shapes, at most `MAX_FRAMES` frames, offsets that
fit the file) before any tensor is read or any module built; names from a workflow resolve inside the input or output
folder only (`resolve_motion_path`); Load Motion's list reads one folder level, no links, headers only, cached by the
folder's modification time (`motion_files_in`).

Pure room: torch and safetensors only, no ComfyUI imports.
"""

from __future__ import annotations

import json
import math
import ntpath
import os
import re
import stat
import struct
import time
from collections.abc import Mapping

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .constants import FACE_FEATURE_DIM, MAX_FRAMES, MOTION_TOKEN_DIM
from .errors import XNeMoError
from .motion_encoder import MotionFusion
from .payloads import MotionSequence

FORMAT = "xnemo_motion"
FORMAT_VERSION = 1
EXTENSION = ".safetensors"
FUSION_PREFIX = "fusion."
_FIELDS = ("tokens", "face_features", "f_rts", "boxes", "face_found")
_REQUIRED = ("tokens", "face_features", "f_rts")
MOTION_TOKENS = FACE_FEATURE_DIM // MOTION_TOKEN_DIM  # 32 tokens per frame
# The fusion head every X-NeMo motion encoder has (official MotEncoder_withExtra): a file may not pick its own sizes.
FUSION_SIZES = {"feature_dim": FACE_FEATURE_DIM, "token_dim": MOTION_TOKEN_DIM, "bbox_dim": 3, "bbox_embed_dim": 64}
MAX_HEADER_BYTES = 1 << 20  # a motion file's header is ~2 KB; a bigger one is not a motion file
_FLOATS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per element
_BOOL = {"BOOL": 1}
_LISTING_SETTLE_NS = 2_000_000_000  # a folder changed this recently may change again within the same mtime tick
_listings: dict[str, tuple[tuple[int, int], list[str]]] = {}


class MotionFileError(XNeMoError):
    """A motion file that cannot be read as an X-NeMo motion of this format version."""


def _optional_float(value: str, name: str, path: str) -> float | None:
    if value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise MotionFileError(
            f"{os.path.basename(path)}: its {name} entry {value!r} is not a positive number; the file is "
            "damaged, save the motion again with X-NeMo Save Motion"
        )
    return number


def save_motion(motion: MotionSequence, path: str) -> None:
    """Write `motion` to `path` (a new .safetensors file); refuses what Load Motion would refuse (over MAX_FRAMES)."""
    if motion.frames > MAX_FRAMES:
        raise MotionFileError(
            f"the motion has {motion.frames:,} frames; a motion file holds at most {MAX_FRAMES:,}: trim the driving "
            "video or save it in parts"
        )
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


def expected_tensors(frames: int) -> dict[str, tuple[tuple[int, ...], dict[str, int]]]:
    """Every tensor a motion file of `frames` frames may hold: name -> (shape, allowed dtypes with their sizes)."""
    f, e = FUSION_SIZES["feature_dim"], FUSION_SIZES["bbox_embed_dim"]
    return {
        "tokens": ((frames, MOTION_TOKENS, MOTION_TOKEN_DIM), _FLOATS),
        "face_features": ((frames, f), _FLOATS),
        "f_rts": ((frames, FUSION_SIZES["bbox_dim"]), _FLOATS),
        "boxes": ((frames, 4), _FLOATS),
        "face_found": ((frames,), _BOOL),
        FUSION_PREFIX + "pe": ((1, MOTION_TOKENS, MOTION_TOKEN_DIM), _FLOATS),
        FUSION_PREFIX + "bbox_proj.0.weight": ((e, FUSION_SIZES["bbox_dim"]), _FLOATS),
        FUSION_PREFIX + "bbox_proj.0.bias": ((e,), _FLOATS),
        FUSION_PREFIX + "bbox_proj.3.weight": ((e, e), _FLOATS),
        FUSION_PREFIX + "bbox_proj.3.bias": ((e,), _FLOATS),
        FUSION_PREFIX + "final_proj.weight": ((f, f + e), _FLOATS),
        FUSION_PREFIX + "final_proj.bias": ((f,), _FLOATS),
    }


def _read_raw_header(path: str) -> tuple[dict, int, int]:
    """(the parsed safetensors header, its size in bytes, the file size), reading the header only; MotionFileError
    for anything else (a folder, a pipe, a device, a header over MAX_HEADER_BYTES or past the file's end)."""
    name = os.path.basename(path)
    pick = "pick a file written by X-NeMo Save Motion"
    size, raw = 0, b""
    try:
        info = os.stat(path)  # before opening: opening a named pipe waits for a writer
        regular = stat.S_ISREG(info.st_mode)
        if regular:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                raw = f.read(size) if size <= MAX_HEADER_BYTES and 8 + size <= info.st_size else b""
    except (OSError, struct.error) as err:
        raise MotionFileError(f"{name} is not an X-NeMo motion file ({err}); {pick}") from None
    if not regular:
        raise MotionFileError(f"{name} is not a regular file; {pick}")
    if size > MAX_HEADER_BYTES:
        raise MotionFileError(
            f"{name} is not an X-NeMo motion file (its header claims {size:,} bytes; a motion's is a few KB, at most "
            f"{MAX_HEADER_BYTES:,}); {pick}"
        )
    if 8 + size > info.st_size:
        raise MotionFileError(
            f"{name} is damaged and cannot be read (its header runs past the end of the file); save the motion again"
        )
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise MotionFileError(f"{name} is not an X-NeMo motion file ({err}); {pick}") from None
    if not isinstance(header, dict):
        raise MotionFileError(f"{name} is not an X-NeMo motion file; {pick}")
    return header, size, info.st_size


def read_header(path: str) -> dict:
    """The safetensors header metadata of `path` (reads only the header); {} when it is not a safetensors file."""
    try:
        header, _, _ = _read_raw_header(path)
    except MotionFileError:
        return {}
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def is_motion_file(path: str) -> bool:
    """Whether `path` says it is an X-NeMo motion (any format version): what Load Motion lists. Reads the header only,
    and parses it only when it names the format (other .safetensors files, e.g. models, are skipped unparsed)."""
    if not path.endswith(EXTENSION):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > MAX_HEADER_BYTES:
                return False
            raw = f.read(size)
    except (OSError, struct.error):
        return False
    if FORMAT.encode() not in raw:
        return False
    try:
        header = json.loads(raw)
    except ValueError:
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def motion_files_in(folder: str) -> list[str]:
    """Names of the motion files directly in `folder`, sorted: no subfolders, no symbolic links, headers only of the
    .safetensors files, and cached until the folder's modification time changes (ComfyUI asks for the list at start,
    on every /object_info and for each queued prompt, so it must cost next to nothing, whatever the folder holds)."""
    try:
        info = os.stat(folder)
    except OSError:
        return []
    key = (info.st_mtime_ns, info.st_ino)
    cached = _listings.get(folder)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    names = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if (
                    entry.name.endswith(EXTENSION)
                    and entry.is_file(follow_symlinks=False)
                    and is_motion_file(entry.path)
                ):
                    names.append(entry.name)
    except OSError:
        return []
    names.sort()
    if time.time_ns() - info.st_mtime_ns > _LISTING_SETTLE_NS:
        _listings[folder] = (key, names)
    return list(names)


_ANNOTATIONS = {" [input]": "input", " [output]": "output"}  # ComfyUI's folder marks (folder_paths)


def resolve_motion_path(name: str, folders: Mapping[str, str]) -> str:
    """The real path of motion file `name` ("sub/x.safetensors", optionally marked " [output]" or " [input]") inside
    `folders["input"]` or `folders["output"]`. Refuses absolute paths, `..`, and links leading out of the folder: a
    linked `motion_file` input is any string another node makes, not a choice from the list."""
    folder_key, relative = "input", str(name)
    for mark, key in _ANNOTATIONS.items():
        if relative.endswith(mark):
            folder_key, relative = key, relative[: -len(mark)]
            break
    why = None
    parts = re.split(r"[\\/]", relative)
    if not relative or "\x00" in relative:
        why = "it is empty or holds a NUL character"
    elif os.path.isabs(relative) or ntpath.isabs(relative) or ntpath.splitdrive(relative)[0]:
        why = "it is an absolute path"
    elif ".." in parts:
        why = "it climbs out with '..'"
    elif not relative.endswith(EXTENSION):
        why = f"it does not end with {EXTENSION}"
    else:
        root = os.path.realpath(folders[folder_key])
        real = os.path.realpath(os.path.join(root, relative))
        if os.path.commonpath([root, real]) != root:
            why = f"a link leads it out of the {folder_key} folder"
        elif not os.path.isfile(real):
            why = f"there is no such file in the {folder_key} folder"
        else:
            return real
    raise MotionFileError(
        f"motion_file {name!r} is refused: {why}. X-NeMo Load Motion reads {EXTENSION} files from ComfyUI's input "
        "folder, or from its output folder when the name ends with ' [output]'; put the file from X-NeMo Save Motion "
        "there and give its name relative to that folder"
    )


def check_motion_file(path: str) -> dict:
    """Check a motion file from its header alone, before anything is read or built: format and version, every tensor's
    name, dtype and shape against X-NeMo's sizes (at most MAX_FRAMES frames), data offsets that tile the file exactly,
    and the fusion head's sizes. Returns the header metadata; MotionFileError says what is wrong and what to do."""
    name = os.path.basename(path)
    header, header_size, file_size = _read_raw_header(path)
    meta = header.pop("__metadata__", None)
    meta = meta if isinstance(meta, dict) else {}
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
    again = "save the motion again with X-NeMo Save Motion"
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise MotionFileError(f"{name} lacks {', '.join(missing)}; the file is damaged, {again}")
    tokens = header["tokens"]
    shape = tokens.get("shape") if isinstance(tokens, dict) else None
    if not (isinstance(shape, list) and shape and all(type(n) is int and n >= 0 for n in shape)):
        raise MotionFileError(f"{name}: its tokens entry is not a tensor; the file is damaged, {again}")
    frames = shape[0]
    if not 1 <= frames <= MAX_FRAMES:
        raise MotionFileError(
            f"{name} holds {frames:,} frames; X-NeMo motion files hold 1 to {MAX_FRAMES:,}. Split the driving "
            "video and encode the parts separately"
        )
    expected = expected_tensors(frames)
    spans = []
    for key, entry in header.items():
        if key not in expected:
            raise MotionFileError(f"{name} holds a tensor {key!r} that X-NeMo motion files do not have; {again}")
        want_shape, dtypes = expected[key]
        if not isinstance(entry, dict) or entry.get("dtype") not in dtypes:
            got = entry.get("dtype") if isinstance(entry, dict) else entry
            raise MotionFileError(
                f"{name}: {key} has dtype {got!r}, expected one of {', '.join(dtypes)}; the file is damaged, {again}"
            )
        if entry.get("shape") != list(want_shape):
            raise MotionFileError(
                f"{name}: {key} has shape {entry.get('shape')}, expected {list(want_shape)} for {frames} frames "
                f"(X-NeMo's sizes); the file is damaged or not an X-NeMo motion, {again}"
            )
        offsets = entry.get("data_offsets")
        nbytes = math.prod(want_shape) * dtypes[entry["dtype"]]
        if (
            not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets))
            or offsets[1] - offsets[0] != nbytes
        ):
            raise MotionFileError(f"{name}: {key}'s data offsets {offsets} do not hold {nbytes:,} bytes; {again}")
        spans.append(tuple(offsets))
    spans.sort()
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise MotionFileError(f"{name}: its tensors overlap or leave gaps; the file is damaged, {again}")
        end = stop
    if 8 + header_size + end != file_size:
        raise MotionFileError(
            f"{name} is damaged and cannot be read (it is {file_size:,} bytes, its header describes "
            f"{8 + header_size + end:,}); {again}"
        )
    has_fusion = any(k.startswith(FUSION_PREFIX) for k in header)
    if has_fusion:
        fusion_keys = {k for k in expected if k.startswith(FUSION_PREFIX)}
        if not fusion_keys <= header.keys():
            gone = ", ".join(sorted(fusion_keys - header.keys()))
            raise MotionFileError(f"{name}: its fusion head lacks {gone}; the file is damaged, {again}")
        try:
            sizes = json.loads(meta.get("fusion_sizes", ""))
        except (TypeError, ValueError):
            sizes = None
        if sizes != FUSION_SIZES:
            raise MotionFileError(
                f"{name}: its fusion head sizes {meta.get('fusion_sizes')!r} are not X-NeMo's {FUSION_SIZES}; "
                f"the file is damaged or not an X-NeMo motion, {again}"
            )
    return meta


def load_motion(path: str) -> MotionSequence:
    """Read a motion written by `save_motion`, once `check_motion_file` has passed its header (nothing is read or built
    from sizes the file chose); MotionFileError says what is wrong and what to do."""
    name = os.path.basename(path)
    meta = check_motion_file(path)
    fps = _optional_float(meta.get("fps", ""), "fps", path)
    crop_scale = _optional_float(meta.get("crop_scale", ""), "crop_scale", path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise MotionFileError(
            f"{name} is damaged and cannot be read ({err}); save the motion again with X-NeMo Save Motion"
        ) from None

    fusion = None
    fusion_state = {k[len(FUSION_PREFIX) :]: v for k, v in tensors.items() if k.startswith(FUSION_PREFIX)}
    if fusion_state:
        fusion = MotionFusion(**FUSION_SIZES)  # X-NeMo's sizes; the file's own were checked to match them
        try:
            fusion.load_state_dict(fusion_state, strict=True)
        except RuntimeError as err:
            raise MotionFileError(
                f"{name}: its fusion head does not load ({err}); the file is damaged, save the motion again"
            ) from None
        fusion = fusion.eval().requires_grad_(False)
    fields = {k: tensors.get(k) for k in _FIELDS}
    try:
        return MotionSequence(**fields, fusion=fusion, fps=fps, crop_scale=crop_scale)
    except ValueError as err:
        raise MotionFileError(f"{name}: {err}; the file is damaged, save the motion again") from None
