"""X-NeMo Save Motion / Load Motion in-process: ComfyUI's output/input folders, the file list, exact round trips."""

from __future__ import annotations

import json
import math
import shutil

import folder_paths
import pytest
import torch
from motion_samples import assert_same, motion

from xnemo_pack.nodes.motion_file import XNeMoLoadMotion, XNeMoSaveMotion, motion_file_choices
from xnemo_pack.xnemo_core.pure.motion_file import MotionFileError, save_motion


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Temporary input/output folders for ComfyUI (restored afterwards)."""
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    inputs.mkdir()
    outputs.mkdir()
    monkeypatch.setattr(folder_paths, "input_directory", str(inputs))
    monkeypatch.setattr(folder_paths, "output_directory", str(outputs))
    return inputs, outputs


def test_save_then_load_from_the_list(folders):
    inputs, outputs = folders
    original = motion(frames=5)
    ui = XNeMoSaveMotion.execute(motion=original, filename_prefix="xnemo_motion/walk").ui
    saved = outputs / "xnemo_motion" / "walk_00001_.safetensors"
    assert saved.is_file(), list(outputs.rglob("*"))
    assert "xnemo_motion/walk_00001_.safetensors [output] (5 frames)" in str(ui)
    XNeMoSaveMotion.execute(motion=original, filename_prefix="xnemo_motion/walk")  # the counter moves on
    assert (outputs / "xnemo_motion" / "walk_00002_.safetensors").is_file()

    # the list: motion files only (not other safetensors), input folder first, output ones marked [output]
    shutil.copyfile(saved, inputs / "copied.safetensors")
    torch.save({"x": 1}, inputs / "not_a_motion.safetensors")
    (inputs / "picture.png").write_bytes(b"png")
    choices = motion_file_choices()
    assert choices == [
        "copied.safetensors",
        "xnemo_motion/walk_00001_.safetensors [output]",
        "xnemo_motion/walk_00002_.safetensors [output]",
    ]
    schema_options = XNeMoLoadMotion.define_schema().inputs[0].options
    assert schema_options == choices

    for choice in ("copied.safetensors", "xnemo_motion/walk_00001_.safetensors [output]"):
        assert XNeMoLoadMotion.validate_inputs(motion_file=choice) is True
        assert_same(original, XNeMoLoadMotion.execute(motion_file=choice).result[0])
    assert XNeMoLoadMotion.fingerprint_inputs("copied.safetensors") == XNeMoLoadMotion.fingerprint_inputs(
        "xnemo_motion/walk_00001_.safetensors [output]"
    )


def test_load_refuses_missing_and_foreign_files(folders):
    inputs, _ = folders
    message = XNeMoLoadMotion.validate_inputs(motion_file="gone.safetensors")
    assert "'gone.safetensors' is not an X-NeMo motion file in ComfyUI's input or output folder" in message
    torch.save({"x": 1}, inputs / "not_a_motion.safetensors")
    assert "is not an X-NeMo motion file" in XNeMoLoadMotion.validate_inputs(motion_file="not_a_motion.safetensors")
    (inputs / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(MotionFileError, match="broken.safetensors is not an X-NeMo motion file"):
        XNeMoLoadMotion.execute(motion_file="broken.safetensors")


@pytest.mark.parametrize(
    "name, why",
    [
        ("../outside.safetensors", "it climbs out with '..'"),
        ("xnemo_motion/../../outside.safetensors [output]", "it climbs out with '..'"),
        ("{outside}", "it is an absolute path"),
        ("escape.safetensors", "a link leads it out of the input folder"),
    ],
)
def test_a_linked_motion_file_cannot_leave_the_folders(folders, name, why):
    """A linked motion_file (a string from another node) skips the list and validate_inputs: execute and the
    fingerprint refuse it by the same rules, even when the file outside is a valid motion."""
    inputs, _ = folders
    outside = inputs.parent / "outside.safetensors"
    save_motion(motion(frames=3), str(outside))
    (inputs / "escape.safetensors").symlink_to(outside)
    name = name.format(outside=outside)
    assert XNeMoLoadMotion.validate_inputs() is True  # linked: the value is not known at queue time
    with pytest.raises(MotionFileError, match=f"is refused: {why}"):
        XNeMoLoadMotion.execute(motion_file=name)
    assert math.isnan(XNeMoLoadMotion.fingerprint_inputs(name))
    assert "escape.safetensors" not in motion_file_choices()  # links are not listed either


def test_a_linked_motion_file_inside_the_folders_loads(folders):
    _, outputs = folders
    original = motion(frames=4)
    (outputs / "takes" / "day1").mkdir(parents=True)
    save_motion(original, str(outputs / "takes" / "day1" / "walk.safetensors"))
    assert_same(original, XNeMoLoadMotion.execute(motion_file="takes/day1/walk.safetensors [output]").result[0])
    assert "takes/day1/walk.safetensors [output]" not in motion_file_choices()  # deeper than the list reads


def test_validation_refuses_a_hostile_listed_file_from_its_header(folders):
    """A listed file whose header asks for a huge fusion head is refused at queue time, before anything runs."""
    inputs, _ = folders
    save_motion(motion(frames=3), str(inputs / "crafted.safetensors"))
    raw = (inputs / "crafted.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"]["fusion_sizes"] = json.dumps(
        {"feature_dim": 512, "token_dim": 16, "bbox_dim": 3, "bbox_embed_dim": 10**6}
    )
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    (inputs / "crafted.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + size :])
    assert "crafted.safetensors" in motion_file_choices()
    message = XNeMoLoadMotion.validate_inputs(motion_file="crafted.safetensors")
    assert "its fusion head sizes" in message and "are not X-NeMo's" in message


def test_save_motion_says_when_load_motion_will_not_list_the_file(folders):
    ui = XNeMoSaveMotion.execute(motion=motion(frames=3), filename_prefix="takes/walk").ui
    assert "Load Motion lists only the output folder's top level and xnemo_motion/: move it there" in str(ui)
    ui = XNeMoSaveMotion.execute(motion=motion(frames=3), filename_prefix="walk").ui
    assert "move it there" not in str(ui) and "walk_00001_.safetensors [output]" in motion_file_choices()


def test_a_linked_xnemo_motion_folder_is_not_listed(folders):
    inputs, outputs = folders
    elsewhere = inputs.parent / "elsewhere"
    elsewhere.mkdir()
    save_motion(motion(frames=3), str(elsewhere / "far.safetensors"))
    (outputs / "xnemo_motion").symlink_to(elsewhere, target_is_directory=True)
    save_motion(motion(frames=3), str(inputs / "near.safetensors"))
    assert motion_file_choices() == ["near.safetensors"]
