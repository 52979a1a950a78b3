"""Motion files as untrusted input (xnemo_core.pure.motion_file): crafted headers, oversized tensors, wrong dtypes and
shapes, truncated files, names that leave the input/output folders, and the bounded Load Motion list. Each hostile file
is refused from its header, before any tensor is read or any module built, with a message that says what to do."""

from __future__ import annotations

import json
import os
import struct
import threading

import pytest
import torch
from motion_samples import assert_same, motion

from xnemo_pack.xnemo_core.pure import motion_file as mf
from xnemo_pack.xnemo_core.pure.constants import MAX_FRAMES
from xnemo_pack.xnemo_core.pure.motion_file import (
    FUSION_SIZES,
    MAX_HEADER_BYTES,
    MotionFileError,
    check_motion_file,
    is_motion_file,
    load_motion,
    motion_files_in,
    read_header,
    resolve_motion_path,
    save_motion,
)


def split(path) -> tuple[dict, bytes]:
    """(header, data) of a safetensors file."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def write(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_motion(motion(frames=5), str(path))
    return path


@pytest.fixture
def no_fusion_built(monkeypatch):
    """Fails the test if a fusion head is built: hostile sizes must be refused before."""

    def refuse(**sizes):
        raise AssertionError(f"MotionFusion built from {sizes}")

    monkeypatch.setattr(mf, "MotionFusion", refuse)


def refused(path, match: str) -> None:
    with pytest.raises(MotionFileError, match=match):
        load_motion(str(path))
    with pytest.raises(MotionFileError, match=match):
        check_motion_file(str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Crafted header sizes


def test_a_huge_header_length_is_refused_unread(tmp_path):
    path = tmp_path / "huge_header.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b'{"__metadata__": {"format": "xnemo_motion"}}')
    refused(path, "its header claims 1,099,511,627,776 bytes")
    assert not is_motion_file(str(path)) and read_header(str(path)) == {}
    just_over = tmp_path / "just_over.safetensors"
    just_over.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * (MAX_HEADER_BYTES + 1))
    refused(just_over, f"at most {MAX_HEADER_BYTES:,}")


@pytest.mark.parametrize(
    "sizes",
    [
        {**FUSION_SIZES, "bbox_embed_dim": 1_000_000},  # ~2 TB of final_proj if it were built
        {**FUSION_SIZES, "feature_dim": 2**20, "token_dim": 1},
        {"feature_dim": 512},
        "not json",
    ],
)
def test_fusion_sizes_other_than_xnemo_are_refused_before_building(tmp_path, good, no_fusion_built, sizes):
    header, data = split(good)
    header["__metadata__"]["fusion_sizes"] = sizes if isinstance(sizes, str) else json.dumps(sizes)
    path = tmp_path / "crafted_sizes.safetensors"
    write(path, header, data)
    refused(path, "its fusion head sizes .* are not X-NeMo's")


def test_a_fusion_weight_of_another_size_is_refused_before_building(tmp_path, good, no_fusion_built):
    header, data = split(good)
    entry = header["fusion.final_proj.weight"]
    header["fusion.final_proj.weight"] = {**entry, "shape": [1_000_000, 1_000_000]}
    path = tmp_path / "crafted_weight.safetensors"
    write(path, header, data)
    refused(path, r"fusion.final_proj.weight has shape \[1000000, 1000000\], expected \[512, 576\]")


# ---------------------------------------------------------------------------------------------------------------------
# Oversized tensors


def test_more_frames_than_the_cap_are_refused_before_reading(tmp_path, good):
    header, data = split(good)
    frames = MAX_FRAMES + 1
    header["tokens"] = {"dtype": "F32", "shape": [frames, 32, 16], "data_offsets": [0, frames * 32 * 16 * 4]}
    path = tmp_path / "long.safetensors"
    write(path, header, data)
    refused(path, f"holds {frames:,} frames; X-NeMo motion files hold 1 to {MAX_FRAMES:,}")


def test_save_refuses_what_load_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr(mf, "MAX_FRAMES", 6)
    save_motion(motion(frames=6), str(tmp_path / "six.safetensors"))
    with pytest.raises(MotionFileError, match="the motion has 7 frames; a motion file holds at most 6"):
        save_motion(motion(frames=7), str(tmp_path / "seven.safetensors"))
    assert not (tmp_path / "seven.safetensors").exists()


def test_a_wider_tensor_is_refused(tmp_path, good):
    header, data = split(good)
    entry = header["face_features"]
    header["face_features"] = {**entry, "shape": [5, 512 * 1024]}
    path = tmp_path / "wide.safetensors"
    write(path, header, data)
    refused(path, r"face_features has shape \[5, 524288\], expected \[5, 512\] for 5 frames")


# ---------------------------------------------------------------------------------------------------------------------
# Wrong dtypes and shapes


@pytest.mark.parametrize(
    "key, dtype", [("tokens", "I32"), ("f_rts", "I64"), ("face_found", "F32"), ("fusion.pe", "U8")]
)
def test_wrong_dtypes_are_refused(tmp_path, good, key, dtype):
    header, data = split(good)
    header[key] = {**header[key], "dtype": dtype}
    path = tmp_path / "dtype.safetensors"
    write(path, header, data)
    refused(path, f"{key} has dtype '{dtype}', expected one of")


@pytest.mark.parametrize(
    "key, shape, expected",
    [
        ("tokens", [5, 32, 8], r"\[5, 32, 16\]"),
        ("tokens", [5, 16384], r"\[5, 32, 16\]"),
        ("f_rts", [5, 2], r"\[5, 3\]"),
        ("boxes", [6, 4], r"\[5, 4\]"),
        ("face_found", [5, 1], r"\[5\]"),
    ],
)
def test_wrong_shapes_are_refused(tmp_path, good, key, shape, expected):
    header, data = split(good)
    header[key] = {**header[key], "shape": shape}
    path = tmp_path / "shape.safetensors"
    write(path, header, data)
    refused(path, f"{key} has shape .*, expected {expected}")


def test_unknown_tensors_and_overlapping_data_are_refused(tmp_path, good):
    header, data = split(good)
    extra = dict(header, evil={"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]})
    path = tmp_path / "extra.safetensors"
    write(path, extra, data + b"\0" * 4)
    refused(path, "holds a tensor 'evil' that X-NeMo motion files do not have")

    header, data = split(good)
    begin, end = header["f_rts"]["data_offsets"]
    header["boxes"] = {**header["boxes"], "data_offsets": [begin, begin + (end - begin) * 4 // 3]}  # 5x4 floats
    path = tmp_path / "overlap.safetensors"
    write(path, header, data)
    refused(path, "its tensors overlap or leave gaps")


# ---------------------------------------------------------------------------------------------------------------------
# Truncated files


@pytest.mark.parametrize("keep", [4, 12, -1, -4000])
def test_truncated_files_are_refused(tmp_path, good, keep):
    data = good.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:keep])
    with pytest.raises(MotionFileError, match="is not an X-NeMo motion file|is damaged and cannot be read"):
        load_motion(str(path))
    if keep < 0:  # the header is whole: the message says how much is missing
        with pytest.raises(MotionFileError, match=f"it is {len(data) + keep:,} bytes, its header describes"):
            load_motion(str(path))


def test_appended_bytes_are_refused(tmp_path, good):
    path = tmp_path / "longer.safetensors"
    path.write_bytes(good.read_bytes() + b"\0" * 64)
    refused(path, "is damaged and cannot be read")


def test_a_named_pipe_is_refused_without_waiting(tmp_path):
    pipe = tmp_path / "pipe.safetensors"
    os.mkfifo(pipe)
    outcome = []

    def load():
        try:
            load_motion(str(pipe))
        except MotionFileError as err:
            outcome.append(str(err))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    assert outcome and "is not a regular file" in outcome[0]
    assert not is_motion_file(str(pipe))


def test_a_good_file_still_loads_in_half_precision(tmp_path):
    """The checks accept what Save Motion writes, any float precision included."""
    original = motion(frames=4)
    half = original.with_(tokens=original.tokens.half(), face_features=original.face_features.bfloat16())
    path = tmp_path / "half.safetensors"
    save_motion(half, str(path))
    assert_same(half, load_motion(str(path)))


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
def test_fps_must_be_a_positive_number(tmp_path, good, value):
    header, data = split(good)
    header["__metadata__"]["fps"] = value
    path = tmp_path / "fps.safetensors"
    write(path, header, data)
    with pytest.raises(MotionFileError, match=f"its fps entry '{value}' is not a positive number"):
        load_motion(str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Names from a workflow: inside the input or output folder only


@pytest.fixture
def folders(tmp_path, good):
    inputs, outputs, outside = tmp_path / "input", tmp_path / "output", tmp_path / "outside"
    for folder in (inputs, outputs, outside, inputs / "sub"):
        folder.mkdir()
    for folder in (inputs, outputs, outside, inputs / "sub"):
        (folder / "m.safetensors").write_bytes(good.read_bytes())
    return {"input": str(inputs), "output": str(outputs), "outside": str(outside)}


@pytest.mark.parametrize(
    "name, why",
    [
        ("../outside/m.safetensors", "it climbs out with '..'"),
        ("sub/../../outside/m.safetensors", "it climbs out with '..'"),
        ("..\\outside\\m.safetensors", "it climbs out with '..'"),
        ("../outside/m.safetensors [output]", "it climbs out with '..'"),
        ("{outside}/m.safetensors", "it is an absolute path"),
        ("C:\\outside\\m.safetensors", "it is an absolute path"),
        ("\\\\server\\share\\m.safetensors", "it is an absolute path"),
        ("m.safetensors [temp]", "it does not end with .safetensors"),
        ("", "it is empty or holds a NUL character"),
        ("m\x00.safetensors", "it is empty or holds a NUL character"),
        ("gone.safetensors", "there is no such file in the input folder"),
        ("sub", "it does not end with .safetensors"),
    ],
)
def test_names_outside_the_folders_are_refused(folders, name, why):
    name = name.format(outside=folders["outside"])
    with pytest.raises(MotionFileError, match="is refused: " + why.replace("(", r"\(")) as err:
        resolve_motion_path(name, folders)
    assert "put the file from X-NeMo Save Motion there" in str(err.value)


def test_links_leading_out_are_refused_and_links_inside_are_followed(folders):
    inputs, outside = folders["input"], folders["outside"]
    os.symlink(os.path.join(outside, "m.safetensors"), os.path.join(inputs, "escape.safetensors"))
    os.symlink(outside, os.path.join(inputs, "door"))
    os.symlink(os.path.join(inputs, "sub", "m.safetensors"), os.path.join(inputs, "alias.safetensors"))
    for name in ("escape.safetensors", "door/m.safetensors"):
        with pytest.raises(MotionFileError, match="a link leads it out of the input folder"):
            resolve_motion_path(name, folders)
    inside = resolve_motion_path("alias.safetensors", folders)
    assert inside == os.path.realpath(os.path.join(inputs, "sub", "m.safetensors"))
    assert resolve_motion_path("m.safetensors [output]", folders) == os.path.realpath(
        os.path.join(folders["output"], "m.safetensors")
    )
    assert resolve_motion_path("sub/m.safetensors [input]", folders).endswith(
        os.path.join("input", "sub", "m.safetensors")
    )


# ---------------------------------------------------------------------------------------------------------------------
# Load Motion's list: one level, no links, headers of .safetensors files only, cached by the folder's mtime


def test_the_list_reads_one_level_without_links(tmp_path, good, monkeypatch):
    folder = tmp_path / "input"
    (folder / "deep" / "deeper").mkdir(parents=True)
    for name in ("a.safetensors", "deep/b.safetensors", "deep/deeper/c.safetensors"):
        (folder / name).write_bytes(good.read_bytes())
    os.symlink(folder, folder / "self")  # a loop: self -> .
    os.symlink("..", folder / "deep" / "up")  # and deep/up -> ..
    os.symlink(folder / "a.safetensors", folder / "linked.safetensors")
    torch.save({"x": 1}, folder / "pickle.safetensors")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 8) + b"{}      ")
    (folder / "dir.safetensors").mkdir()
    for i in range(200):
        (folder / f"frame_{i:04}.png").write_bytes(b"png")

    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(os.path.relpath(path, folder))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(mf, "open", counting_open, raising=False)
    assert motion_files_in(str(folder)) == ["a.safetensors"]
    # only the regular top-level .safetensors files are opened, once each (headers only)
    assert sorted(opened) == ["a.safetensors", "model.safetensors", "pickle.safetensors"]


def test_the_list_is_cached_until_the_folder_changes(tmp_path, good, monkeypatch):
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(good.read_bytes())
    past = 1_600_000_000 * 10**9
    os.utime(folder, ns=(past, past))
    scans = []
    real_scandir = os.scandir
    monkeypatch.setattr(mf.os, "scandir", lambda path: scans.append(path) or real_scandir(path))
    assert motion_files_in(str(folder)) == ["a.safetensors"]
    assert motion_files_in(str(folder)) == ["a.safetensors"]
    assert len(scans) == 1
    (folder / "b.safetensors").write_bytes(good.read_bytes())
    os.utime(folder, ns=(past + 10**9, past + 10**9))
    assert motion_files_in(str(folder)) == ["a.safetensors", "b.safetensors"]
    assert len(scans) == 2
    # a folder changed in the last moments is listed again every time (a change within one mtime tick is not lost)
    (folder / "c.safetensors").write_bytes(good.read_bytes())
    assert motion_files_in(str(folder)) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    motion_files_in(str(folder))
    assert len(scans) == 4
