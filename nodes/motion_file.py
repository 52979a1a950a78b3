"""X-NeMo Save Motion / Load Motion: keep an encoded motion as a .safetensors file and use it again later."""

from __future__ import annotations

import hashlib
import os

import folder_paths
from comfy_api.latest import io

from ..xnemo_core.pure.motion_file import (
    EXTENSION,
    MotionFileError,
    check_motion_file,
    load_motion,
    motion_files_in,
    resolve_motion_path,
    save_motion,
)
from ..xnemo_core.pure.payloads import MotionSequence
from .checks import check_named
from .types import CATEGORY, XNeMoMotion

OUTPUT_TAG = " [output]"  # ComfyUI's annotation for a file in the output folder (folder_paths.get_annotated_filepath)
MOTION_SUBFOLDER = "xnemo_motion"  # Save Motion's default folder: listed too, one level, like the folder itself


def _motion_files(folder: str) -> list[str]:
    """The motion files at the top of `folder` and of its `xnemo_motion/` (not a link), never deeper: the list is
    built at start and on every /object_info, so its cost must not grow with what else the folder holds."""
    found = motion_files_in(folder)
    sub = os.path.join(folder, MOTION_SUBFOLDER)
    if not os.path.islink(sub):
        found += [f"{MOTION_SUBFOLDER}/{name}" for name in motion_files_in(sub)]
    return sorted(found)


def motion_file_choices() -> list[str]:
    """Motion files in ComfyUI's input folder, then those in its output folder (where Save Motion writes)."""
    inputs = _motion_files(folder_paths.get_input_directory())
    outputs = [name + OUTPUT_TAG for name in _motion_files(folder_paths.get_output_directory())]
    return inputs + outputs


def motion_path(motion_file: str) -> str:
    """The checked real path of a motion_file value: inside the input or output folder, whether it was picked from
    the list or arrived through a link (any string another node makes); MotionFileError otherwise."""
    folders = {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory()}
    return resolve_motion_path(motion_file, folders)


class XNeMoSaveMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoSaveMotion",
            display_name="X-NeMo Save Motion",
            category=CATEGORY,
            description="Save an X-NeMo motion (tokens, face features, head boxes, face-found flags, fps and the "
            "fusion head) as a .safetensors file in ComfyUI's output folder, to animate other portraits "
            "with it later through X-NeMo Load Motion, without the driving video.",
            inputs=[
                XNeMoMotion.Input("motion", tooltip="Motion from Encode Motion or Interpolate Motion."),
                io.String.Input(
                    "filename_prefix",
                    default="xnemo_motion/motion",
                    tooltip="File name start, relative to ComfyUI's output folder; a counter and "
                    f"{EXTENSION} are added. Load Motion lists the output folder's top level and its "
                    f"{MOTION_SUBFOLDER}/ subfolder.",
                ),
            ],
            outputs=[],
            is_output_node=True,
            is_experimental=True,
        )

    @classmethod
    def execute(cls, motion: MotionSequence, filename_prefix: str) -> io.NodeOutput:
        if not isinstance(motion, MotionSequence):
            raise TypeError("motion must come from X-NeMo Encode Motion, Interpolate Motion or Load Motion")
        output_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        file_name = f"{name}_{counter:05}_{EXTENSION}"
        save_motion(motion, os.path.join(folder, file_name))
        saved = f"{subfolder}/{file_name}" if subfolder else file_name
        text = f"{saved}{OUTPUT_TAG} ({motion.frames} frames)"
        if subfolder not in ("", MOTION_SUBFOLDER):
            text += f"; Load Motion lists only the output folder's top level and {MOTION_SUBFOLDER}/: move it there"
        return io.NodeOutput(ui={"text": [text]})


class XNeMoLoadMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoLoadMotion",
            display_name="X-NeMo Load Motion",
            category=CATEGORY,
            description="Load a motion saved by X-NeMo Save Motion: files in ComfyUI's input folder, and those in the "
            "output folder marked [output]. Use it as Encode Motion's motion output.",
            inputs=[
                io.Combo.Input(
                    "motion_file",
                    options=motion_file_choices(),
                    tooltip=f"An X-NeMo motion ({EXTENSION}) from the input folder, or from the output "
                    f"folder (marked [output]) where Save Motion writes: each folder's top level and its "
                    f"{MOTION_SUBFOLDER}/ subfolder are listed (not deeper, no links). Refresh after saving.",
                ),
            ],
            outputs=[
                XNeMoMotion.Output(
                    display_name="motion",
                    tooltip="The saved motion, exactly as it was saved (with its fps, boxes and face-found flags).",
                ),
            ],
            is_experimental=True,
        )

    @classmethod
    def validate_inputs(cls, motion_file: str | None = None) -> bool | str:
        # The file list changes on disk: check the file itself (its header only), with a message that says where it
        # should be. A linked value (None here) is checked in execute, by the same rules.
        if motion_file is None:
            return True
        if check_named(cls, motion_file=motion_file) is not True:
            return (
                f"motion_file {motion_file!r} is not an X-NeMo motion file in ComfyUI's input or output folder: "
                "put the .safetensors file from X-NeMo Save Motion in the input folder (or pick one marked "
                "[output]) and refresh"
            )
        try:
            check_motion_file(motion_path(motion_file))
        except MotionFileError as err:
            return str(err)
        return True

    @classmethod
    def fingerprint_inputs(cls, motion_file: str) -> str | float:
        try:
            path = motion_path(motion_file)
            check_motion_file(path)  # bounds the file's size before hashing it
        except MotionFileError:
            return float("nan")  # never cached: execute runs and says what is wrong
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @classmethod
    def execute(cls, motion_file: str) -> io.NodeOutput:
        return io.NodeOutput(load_motion(motion_path(motion_file)))


NODES = [XNeMoSaveMotion, XNeMoLoadMotion]
