"""X-NeMo Reference Condition: the portrait -> positive/negative CONDITIONING, start LATENT and paste-back crop."""

from __future__ import annotations

import comfy.utils
import torch
from comfy_api.latest import io

from ..xnemo_core.pipeline import FaceOptions, reference_condition
from ..xnemo_core.pure import face_crop
from ..xnemo_core.pure.motion_ops import MAX_STRENGTH
from ..xnemo_core.pure.payloads import MotionSequence
from .checks import check_named
from .motion import face_inputs
from .types import CATEGORY, XNeMo, XNeMoCrop, XNeMoMotion

MAX_SIDE = 2048


class XNeMoReferenceCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoReferenceCondition",
            display_name="X-NeMo Reference Condition",
            category=CATEGORY,
            description=(
                "Crop the portrait around its face as X-NeMo was trained, encode it once (CLIP image embedding, "
                "VAE latent, ReferenceNet features) and pair it with the driving motion: positive and negative "
                "conditioning, the blurred-reference start latent, and crop info for Paste Back."
            ),
            inputs=[
                XNeMo.Input("xnemo", tooltip="From Load X-NeMo."),
                io.Image.Input("image", tooltip="The portrait to animate (the first image of a batch is used)."),
                io.ClipVision.Input(
                    "clip_vision",
                    tooltip="CLIP ViT-L/14 image encoder (the sd-image-variations "
                    "image_encoder) from Load CLIP Vision.",
                ),
                io.Vae.Input(
                    "vae",
                    tooltip="The SVD img2vid-xt VAE from X-NeMo Load VAE (official), or an SD1.5 VAE. "
                    "Decode the result with the same VAE in X-NeMo VAE Decode.",
                ),
                XNeMoMotion.Input(
                    "motion",
                    tooltip="Driving motion from Encode Motion (or Interpolate Motion); its "
                    "frame count sets the clip length.",
                ),
                io.Int.Input(
                    "width",
                    default=512,
                    min=64,
                    max=MAX_SIDE,
                    step=64,
                    tooltip="Generation width in pixels (multiple of 64). X-NeMo was trained at 512.",
                ),
                io.Int.Input(
                    "height",
                    default=512,
                    min=64,
                    max=MAX_SIDE,
                    step=64,
                    tooltip="Generation height in pixels (multiple of 64). X-NeMo was trained at 512.",
                ),
                *face_inputs(),
                io.Float.Input(
                    "motion_strength",
                    default=1.0,
                    min=0.0,
                    max=MAX_STRENGTH,
                    step=0.05,
                    tooltip="How much of the driving face's expression to use: 1 = the driving video "
                    "(official), 0 = the portrait's own expression, in between blends the two; "
                    "above 1 exaggerates. Acts on the whole face (no eyes-only or mouth-only).",
                ),
                io.Float.Input(
                    "head_strength",
                    default=1.0,
                    min=0.0,
                    max=MAX_STRENGTH,
                    step=0.05,
                    tooltip="How much of the driving head position and zoom to use (1 = driving, 0 = the "
                    "portrait's own). Only with Encode Motion's f_rts_mode 'relative': 'official' "
                    "motion has none.",
                ),
                io.Combo.Input(
                    "crop_mode",
                    options=list(face_crop.REFERENCE_CROP_MODES),
                    default=face_crop.DEFAULT_REFERENCE_CROP_MODE,
                    optional=True,
                    tooltip="How a non-square width x height is cut from the portrait (square sizes give the "
                    "same crop either way). official: the official square crop (about 2x the face) resized to "
                    "width x height, so the face is stretched to that shape, as in the official code. widen: the "
                    "box grows to the output's shape, so the face keeps its proportions (not the official).",
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="positive",
                    tooltip="CLIP image embedding, reference features and driving motion per frame.",
                ),
                io.Conditioning.Output(
                    display_name="negative",
                    tooltip="X-NeMo's unconditional branch: zero embedding, "
                    "no reference features, the reference face's own motion.",
                ),
                io.Latent.Output(
                    display_name="latent",
                    tooltip="Start latent: the reference latent blurred and repeated "
                    "over the motion's frames (the official start); feed it to Sample Animation.",
                ),
                XNeMoCrop.Output(display_name="crop", tooltip="Where the crop sits in the portrait, for Paste Back."),
                io.Image.Output(
                    display_name="reference_crop", tooltip="The cropped, resized portrait that X-NeMo animates."
                ),
            ],
            is_experimental=True,
        )

    @classmethod
    def validate_inputs(
        cls,
        width: int | None = None,
        height: int | None = None,
        detector: str | None = None,
        face_order: str | None = None,
        crop_mode: str | None = None,
    ) -> bool | str:
        # Named inputs only: ComfyUI's own checks stay on for the rest (see nodes/checks.py).
        checked = check_named(cls, detector=detector, face_order=face_order, crop_mode=crop_mode)
        if checked is not True:
            return checked
        for name, value in (("width", width), ("height", height)):
            if value is not None and (value % 64 or not 64 <= value <= MAX_SIDE):
                return (
                    f"{name} is {value}: it must be a multiple of 64 between 64 and {MAX_SIDE} "
                    f"(the UNet halves the latent three times); 512 is what X-NeMo was trained at"
                )
        return True

    @classmethod
    def execute(
        cls,
        xnemo,
        image: torch.Tensor,
        clip_vision,
        vae,
        motion: MotionSequence,
        width: int,
        height: int,
        detector: str,
        face_index: int,
        face_order: str,
        motion_strength: float = 1.0,
        head_strength: float = 1.0,
        crop_mode: str = face_crop.DEFAULT_REFERENCE_CROP_MODE,
    ) -> io.NodeOutput:
        if not isinstance(motion, MotionSequence):
            raise ValueError("motion must come from X-NeMo Encode Motion or Interpolate Motion")
        if image.ndim != 4 or image.shape[0] == 0:
            raise ValueError(
                f"image must be one picture [1, H, W, C], got shape {tuple(image.shape)}: connect the "
                "portrait (Load Image) to image"
            )
        bar = comfy.utils.ProgressBar(4)
        result = reference_condition(
            xnemo,
            image,
            clip_vision,
            vae,
            motion,
            width,
            height,
            FaceOptions(detector=detector, face_index=face_index, face_order=face_order),
            progress=lambda done, total: bar.update_absolute(done, total),
            motion_strength=motion_strength,
            head_strength=head_strength,
            crop_mode=crop_mode,
        )
        return io.NodeOutput(
            result.positive, result.negative, {"samples": result.latent}, result.crop, result.crop_image
        )


NODES = [XNeMoReferenceCondition]
