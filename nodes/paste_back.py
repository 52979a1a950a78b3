"""X-NeMo Paste Back: put the animated crop back into the original picture."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..xnemo_core.pure.compose import paste_back
from ..xnemo_core.pure.payloads import CropInfo
from .types import CATEGORY, XNeMoCrop


def feather_input(tooltip: str, optional: bool = False):
    """Paste back's soft edge, the same widget in Paste Back and Save Video."""
    return io.Float.Input("feather", default=0.1, min=0.0, max=0.5, step=0.01, optional=optional, tooltip=tooltip)


def color_match_input(tooltip: str, optional: bool = False):
    return io.Boolean.Input("color_match", default=False, optional=optional, tooltip=tooltip)


class XNeMoPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoPasteBack",
            display_name="X-NeMo Paste Back",
            category=CATEGORY,
            description="Composite the animated face crop back into the full original picture with a soft edge.",
            inputs=[
                io.Image.Input("images", tooltip="Animated frames (the decoded output of X-NeMo Sample Animation)."),
                XNeMoCrop.Input(
                    "crop",
                    tooltip="Crop info from X-NeMo Reference Condition: where in the original "
                    "the reference crop was taken.",
                ),
                io.Image.Input(
                    "original",
                    tooltip="The uncropped reference picture given to X-NeMo Reference "
                    "Condition (one image, or one frame per animated frame).",
                ),
                feather_input(
                    "Soft-edge width as a fraction of the crop size. Raise it if the crop's edge shows; 0 gives a "
                    "hard edge. Edges at the picture border are never feathered."
                ),
                color_match_input(
                    "Match the animated crop's colour (mean and spread per channel) to the original inside the "
                    "crop box. Turn on if the pasted face looks tinted."
                ),
            ],
            outputs=[
                io.Image.Output(
                    "composited", display_name="images", tooltip="Full-size frames with the animated face pasted in."
                ),
                io.Mask.Output(
                    "mask",
                    display_name="mask",
                    tooltip="Where the animated crop was blended in (1 = fully "
                    "animated); feed it to other compositing nodes.",
                ),
            ],
            is_experimental=True,
        )

    @classmethod
    def execute(
        cls, images: torch.Tensor, crop: CropInfo, original: torch.Tensor, feather: float, color_match: bool
    ) -> io.NodeOutput:
        if not isinstance(crop, CropInfo):
            raise ValueError(f"crop must come from X-NeMo Reference Condition, got {type(crop).__name__}")
        if original.shape[0] not in (1, images.shape[0]):
            raise ValueError(
                f"original has {original.shape[0]} frames but there are {images.shape[0]} animated "
                "frames; connect a single image or a batch of the same length"
            )
        frames, mask = paste_back(images, crop, original, feather=feather, color_match=color_match)
        return io.NodeOutput(frames, mask)


NODES = [XNeMoPasteBack]
