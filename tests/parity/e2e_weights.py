"""The end-to-end set's CLIP image encoder and SVD VAE, regenerated from its recipe.py into the files users download.

models/clip_vision/
    sd-image-variations_image_encoder.safetensors  lambdalabs/sd-image-variations-diffusers image_encoder/
                                                    model.safetensors (transformers CLIPVisionModelWithProjection)
    clip-vit-large-patch14.safetensors             openai/clip-vit-large-patch14 model.safetensors: a whole CLIPModel,
                                                    the same vision tower and projection plus a text tower that Load
                                                    CLIP Vision leaves out (a few text tensors stand for it here)
models/vae/
    svd_xt_vae.safetensors                          stabilityai/stable-video-diffusion-img2vid-xt
                                                    vae/diffusion_pytorch_model.safetensors (diffusers)
    svd_xt_vae_comfyui.safetensors                  the same after scripts/convert_svd_vae.py
    svd_xt_first_stage.safetensors                  the VAE part of svd_xt.safetensors (`first_stage_model.*`), what
                                                    Image Only Checkpoint Loader hands to comfy.sd.VAE after
                                                    stripping the prefix
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import folder_paths
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CLIP_FILES = {
    "sd-image-variations": "sd-image-variations_image_encoder.safetensors",
    "clip-vit-large-patch14": "clip-vit-large-patch14.safetensors",
}
VAE_DIFFUSERS = "svd_xt_vae.safetensors"
VAE_CONVERTED = "svd_xt_vae_comfyui.safetensors"
VAE_FIRST_STAGE = "svd_xt_first_stage.safetensors"
TEXT_TOWER_STAND_INS = {
    "logit_scale": (),
    "text_projection.weight": (768, 768),
    "text_model.final_layer_norm.weight": (768,),
}


@dataclass
class E2EModels:
    root: Path
    digests: dict[str, str] = field(default_factory=dict)  # recipe digest of what was written, per network


def load_recipe(e2e_dir: Path):
    spec = importlib.util.spec_from_file_location("xnemo_e2e_recipe", e2e_dir / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _convert_script():
    spec = importlib.util.spec_from_file_location("convert_svd_vae", ROOT / "scripts" / "convert_svd_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_user_files(e2e_dir: Path, manifest: dict, root: Path) -> E2EModels:
    recipe = load_recipe(e2e_dir)
    clip_dir, vae_dir = root / "clip_vision", root / "vae"
    clip_dir.mkdir(parents=True)
    vae_dir.mkdir(parents=True)
    models = E2EModels(root)

    clip = recipe.state_dict("clip")
    models.digests["clip"] = recipe.digest(clip)
    # transformers refuses safetensors without metadata format=pt; the downloaded files carry it.
    save_file(clip, str(clip_dir / CLIP_FILES["sd-image-variations"]), metadata={"format": "pt"})
    g = torch.Generator().manual_seed(0)
    extras = {k: torch.randn(shape, generator=g).to(torch.float16) for k, shape in TEXT_TOWER_STAND_INS.items()}
    save_file({**clip, **extras}, str(clip_dir / CLIP_FILES["clip-vit-large-patch14"]), metadata={"format": "pt"})
    del clip

    vae = recipe.state_dict("vae")
    models.digests["vae"] = recipe.digest(vae)
    save_file(vae, str(vae_dir / VAE_DIFFUSERS))
    del vae
    assert _convert_script().main([str(vae_dir / VAE_DIFFUSERS), "--out", str(vae_dir / VAE_CONVERTED)]) == 0
    from safetensors.torch import load_file

    converted = load_file(str(vae_dir / VAE_CONVERTED))
    save_file({f"first_stage_model.{k}": v for k, v in converted.items()}, str(vae_dir / VAE_FIRST_STAGE))

    folder_paths.add_model_folder_path("clip_vision", str(clip_dir))
    folder_paths.add_model_folder_path("vae", str(vae_dir))
    return models


def remove(models: E2EModels) -> None:
    shutil.rmtree(models.root, ignore_errors=True)
