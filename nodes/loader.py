"""Load X-NeMo: the four official files -> MODEL (denoising UNet with X-NeMo layers) and XNEMO."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..xnemo_core.adapters.model import WEIGHT_DTYPES, XNeMoFiles, load_xnemo
from ..xnemo_core.pure.constants import CHECKPOINT_FILES, MODEL_FOLDER
from .checks import check_named
from .types import CATEGORY, XNeMo

SLOTS = tuple(CHECKPOINT_FILES)  # denoising_unet, reference_unet, motion_encoder, temporal_module


def _choices(slot: str) -> tuple[list[str], str | None]:
    files = folder_paths.get_filename_list(MODEL_FOLDER)
    stem = CHECKPOINT_FILES[slot]
    preferred = [f for f in files if f.rsplit("/", 1)[-1].startswith(stem)]
    return files, (preferred[0] if preferred else None)


def _file_input(slot: str, what: str) -> io.Combo.Input:
    files, default = _choices(slot)
    return io.Combo.Input(
        slot,
        options=files,
        default=default,
        tooltip=f"{what} Official file: {CHECKPOINT_FILES[slot]}.pth (or .safetensors) in "
        f"ComfyUI/models/{MODEL_FOLDER}/.",
    )


class XNeMoLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoLoader",
            display_name="Load X-NeMo",
            category=CATEGORY,
            description=(
                "Load the four X-NeMo files: the denoising UNet with its motion and temporal layers (MODEL) and "
                "the ReferenceNet + motion encoder (XNEMO). Weights are managed by ComfyUI."
            ),
            inputs=[
                _file_input("denoising_unet", "Denoising UNet with the motion cross-attention layers."),
                _file_input("reference_unet", "ReferenceNet: encodes the portrait's appearance."),
                _file_input("motion_encoder", "Motion encoder: turns a face crop into 32 motion tokens."),
                _file_input("temporal_module", "Temporal layers that keep frames coherent."),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="auto",
                    tooltip="Weight precision. auto: fp16/bf16 on GPUs, fp32 on CPU. fp16 halves memory "
                    "(the official setting); fp32 only for exact comparisons.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="Denoising UNet with X-NeMo's motion and temporal layers "
                    "and noise schedule; sample it with X-NeMo Sample Animation (or KSampler for one window).",
                ),
                XNeMo.Output(
                    display_name="XNEMO",
                    tooltip="ReferenceNet and motion encoder, for Encode Motion and Reference Condition.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        denoising_unet: str | None = None,
        reference_unet: str | None = None,
        motion_encoder: str | None = None,
        temporal_module: str | None = None,
        weight_dtype: str | None = None,
    ) -> bool | str:
        # Named inputs only: ComfyUI's own checks stay on for the rest (see nodes/checks.py).
        for slot, name in zip(SLOTS, (denoising_unet, reference_unet, motion_encoder, temporal_module)):
            if name is not None and folder_paths.get_full_path(MODEL_FOLDER, name) is None:
                return (
                    f"{slot}: {name} is not in models/{MODEL_FOLDER}/. Put the official "
                    f"{CHECKPOINT_FILES[slot]}.pth there and refresh."
                )
        return check_named(cls, weight_dtype=weight_dtype)

    @classmethod
    def execute(
        cls, denoising_unet: str, reference_unet: str, motion_encoder: str, temporal_module: str, weight_dtype: str
    ) -> io.NodeOutput:
        paths = {
            slot: folder_paths.get_full_path_or_raise(MODEL_FOLDER, name)
            for slot, name in zip(SLOTS, (denoising_unet, reference_unet, motion_encoder, temporal_module))
        }
        model, xnemo = load_xnemo(XNeMoFiles(**paths), weight_dtype)
        return io.NodeOutput(model, xnemo)


NODES = [XNeMoLoader]
