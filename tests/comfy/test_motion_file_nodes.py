"""X-NeMo Save Motion / Load Motion in-process: ComfyUI's output/input folders, the file list, exact round trips."""

from __future__ import annotations

import shutil

import folder_paths
import pytest
import torch
from motion_samples import assert_same, motion

from xnemo_pack.nodes.motion_file import XNeMoLoadMotion, XNeMoSaveMotion, motion_file_choices
from xnemo_pack.xnemo_core.pure.motion_file import MotionFileError


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
