"""The CLIP image embedding of the reference, as the official computes it, on a model from core Load CLIP Vision.

The official (sd-image-variations `image_encoder`, a CLIPVisionModelWithProjection) embeds its 512 px reference crop
after `crop.resize((224, 224))` (PIL bicubic) and CLIPImageProcessor (rescale, CLIP mean/std), and uses the projected
768-d `image_embeds`. ComfyUI's ViT-L/14 (`CLIPVisionModelProjection`) computes the same network; given a 224 x 224
image its preprocessing only normalises, so the PIL resize here is all that is needed to match.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy.clip_model import CLIPVisionModelProjection

from ..pure.errors import IncompatibleModelError
from ..pure.face_crop import clip_input_crop

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# ViT-L/14 at 224 px: width 1024, 24 layers, 14 px patches, projection to 768.
VIT_L14 = {"image size": 224, "width": 1024, "layers": 24, "patch": 14, "projection": 768}
FIX = (
    "load the CLIP ViT-L/14 image encoder in Load CLIP Vision: the sd-image-variations image_encoder "
    "(model.safetensors) or OpenAI's clip-vit-large-patch14 (see the README, 'Where the weights go')"
)


def describe(clip_vision) -> dict:
    """The sizes that tell a ViT-L/14 from other image encoders (None where the model has no such part)."""
    model = getattr(clip_vision, "model", None)
    if not isinstance(model, CLIPVisionModelProjection):
        return {"encoder": type(model).__name__}
    vision = model.vision_model
    projection = getattr(model.visual_projection, "weight", None)
    return {
        "image size": getattr(clip_vision, "image_size", None),
        "width": vision.embeddings.patch_embedding.weight.shape[0],
        "layers": len(vision.encoder.layers),
        "patch": vision.embeddings.patch_embedding.weight.shape[-1],
        "projection": None if projection is None else projection.shape[0],
    }


def check_clip_vision(clip_vision) -> None:
    """Refuse any image encoder but CLIP ViT-L/14 (224 px, 768-d projection, CLIP normalisation)."""
    found = describe(clip_vision)
    if found != VIT_L14 or getattr(clip_vision.model.vision_model, "output_layernorm", False):
        raise IncompatibleModelError(
            f"the CLIP vision model is not CLIP ViT-L/14 (found {found}, expected {VIT_L14}); "
            f"X-NeMo was trained with its 768-d image embedding: {FIX}"
        )
    if list(clip_vision.image_mean) != CLIP_MEAN or list(clip_vision.image_std) != CLIP_STD:
        raise IncompatibleModelError(
            f"the CLIP vision model normalises with mean {clip_vision.image_mean} / std "
            f"{clip_vision.image_std}, not CLIP's: {FIX}"
        )


@torch.no_grad()  # ComfyUI runs nodes in inference mode; direct callers (tests, scripts) would keep the graph
def clip_image_embedding(clip_vision, crop) -> torch.Tensor:
    """The official `image_embeds` of the official 512 px reference crop (uint8 [512, 512, 3], numpy or torch) as
    CONDITIONING context [1, 1, 768]."""
    check_clip_vision(clip_vision)
    pixels = torch.from_numpy(clip_input_crop(np.ascontiguousarray(np.asarray(crop))).copy()).float().div(255.0)
    embeds = clip_vision.encode_image(pixels.unsqueeze(0), crop=True)["image_embeds"]
    return embeds.float().cpu().reshape(1, 1, -1)
