"""XNEMO_MOTION files (xnemo_core.pure.motion_file): exact round trips, and clear errors for files it cannot read."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from motion_samples import assert_same, motion
from safetensors.torch import save_file

from xnemo_pack.xnemo_core.pure.motion_file import (
    FORMAT_VERSION,
    MotionFileError,
    is_motion_file,
    load_motion,
    read_header,
    save_motion,
)


def test_round_trip_is_exact(tmp_path):
    original = motion()
    path = str(tmp_path / "m.safetensors")
    save_motion(original, path)
    loaded = load_motion(path)
    assert_same(original, loaded)
    # the stored fusion head re-fuses exactly as the original: edits of a loaded motion match edits of the original
    state, again = original.fusion.state_dict(), loaded.fusion.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(
            original.fusion(original.face_features, original.f_rts), loaded.fusion(loaded.face_features, loaded.f_rts)
        )
    meta = read_header(path)
    assert meta["format"] == "xnemo_motion" and meta["format_version"] == str(FORMAT_VERSION)
    assert is_motion_file(path)


def test_round_trip_without_optional_fields(tmp_path):
    original = motion(boxes=None, face_found=None, fps=None, fusion=None)
    path = str(tmp_path / "bare.safetensors")
    save_motion(original, path)
    loaded = load_motion(path)
    assert_same(original, loaded)
    assert loaded.fusion is None and loaded.fps is None and loaded.boxes is None


def test_other_format_version_is_refused(tmp_path):
    path = str(tmp_path / "future.safetensors")
    m = motion()
    save_file(
        {"tokens": m.tokens, "face_features": m.face_features, "f_rts": m.f_rts},
        path,
        metadata={"format": "xnemo_motion", "format_version": "2", "fps": ""},
    )
    assert is_motion_file(path)  # listed by Load Motion, then refused with the reason
    with pytest.raises(MotionFileError, match="format version 2, but this version of the pack reads version 1"):
        load_motion(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_safetensors", "missing_tokens", "bad_fps"])
def test_unreadable_files_get_a_clear_error(tmp_path, damage):
    path = tmp_path / f"{damage}.safetensors"
    good = tmp_path / "good.safetensors"
    save_motion(motion(), str(good))
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) - 1000])
        expected = "is damaged and cannot be read"
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file" * 10)
        expected = "is not an X-NeMo motion file"
    elif damage == "other_safetensors":
        save_file({"weight": torch.zeros(2)}, str(path))
        expected = "is not an X-NeMo motion file"
    elif damage == "missing_tokens":
        save_file(
            {"face_features": torch.zeros(2, 512)},
            str(path),
            metadata={"format": "xnemo_motion", "format_version": "1"},
        )
        expected = "lacks tokens, f_rts"
    else:
        size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + size])
        header["__metadata__"]["fps"] = "fast"
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + size :])
        expected = "its fps entry 'fast' is not a positive number"
    with pytest.raises(MotionFileError, match=expected) as err:
        load_motion(str(path))
    assert path.name in str(err.value)
    assert damage in ("truncated", "missing_tokens", "bad_fps") or not is_motion_file(str(path))
