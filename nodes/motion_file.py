"""X-NeMo Save Motion / Load Motion: keep an encoded motion as a .safetensors file and use it again later."""

from __future__ import annotations

import hashlib
import os

import folder_paths
from comfy_api.latest import io

from ..xnemo_core.pure.motion_file import EXTENSION, is_motion_file, load_motion, save_motion
from ..xnemo_core.pure.payloads import MotionSequence
from .checks import check_named
from .types import CATEGORY, XNeMoMotion

OUTPUT_TAG = " [output]"  # ComfyUI's annotation for a file in the output folder (folder_paths.get_annotated_filepath)


def _motion_files(folder: str) -> list[str]:
    found = []
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(EXTENSION) and is_motion_file(path):
                found.append(os.path.relpath(path, folder).replace(os.sep, "/"))
    return sorted(found)


def motion_file_choices() -> list[str]:
    """Motion files in ComfyUI's input folder, then those in its output folder (where Save Motion writes)."""
    inputs = _motion_files(folder_paths.get_input_directory())
    outputs = [name + OUTPUT_TAG for name in _motion_files(folder_paths.get_output_directory())]
    return inputs + outputs


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
                    f"{EXTENSION} are added.",
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
        return io.NodeOutput(ui={"text": [f"{saved}{OUTPUT_TAG} ({motion.frames} frames)"]})


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
                    "folder (marked [output]) where Save Motion writes. Refresh after saving.",
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
        # The file list changes on disk: check the file itself, with a message that says where it should be.
        if motion_file is None:
            return True
        listed = check_named(cls, motion_file=motion_file) is True
        if not listed or not folder_paths.exists_annotated_filepath(motion_file):
            return (
                f"motion_file {motion_file!r} is not an X-NeMo motion file in ComfyUI's input or output folder: "
                "put the .safetensors file from X-NeMo Save Motion in the input folder (or pick one marked "
                "[output]) and refresh"
            )
        return True

    @classmethod
    def fingerprint_inputs(cls, motion_file: str) -> str:
        path = folder_paths.get_annotated_filepath(motion_file)
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def execute(cls, motion_file: str) -> io.NodeOutput:
        return io.NodeOutput(load_motion(folder_paths.get_annotated_filepath(motion_file)))


NODES = [XNeMoSaveMotion, XNeMoLoadMotion]
