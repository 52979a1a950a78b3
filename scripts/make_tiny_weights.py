"""Tooling, not engine: tiny random weights in the official X-NeMo file format, for demos and tests on machines
without the real ones.

The output of a model built from them is noise: they prove that the whole pipeline runs (loading, face tracking,
conditioning, windowed sampling, decoding, saving), not that it animates. Files are written in the official key
names (diffusers UNet keys, `*.motion_modules.*`, `*.temporal_modules.*`, `model.*` for the motion encoder), so they go
through exactly the loader the official files go through. CLIP ViT-L/14 and the SD VAE have fixed sizes in ComfyUI's
loaders, so those are full-size random models (about 600 MB and 170 MB in fp16).
"""

from __future__ import annotations

import logging
from pathlib import Path

import comfy_harness
import torch

comfy_harness.import_pack()  # this repository as the package `xnemo_pack`, as the tests and the demo see it
from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt  # noqa: E402
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES, MODEL_FOLDER  # noqa: E402
from xnemo_pack.xnemo_core.pure.layers import XNeMoSites  # noqa: E402
from xnemo_pack.xnemo_core.pure.motion_encoder import MotionEncoder  # noqa: E402

log = logging.getLogger("xnemo")

TINY_UNET = ckpt.UNetShape(
    model_channels=32,
    channel_mult=(1, 1, 1, 2),
    num_res_blocks=2,
    context_dim=768,
    in_channels=4,
    attention_levels=(True, True, True, False),
    has_output=True,
)
CLIP_VISION_NAME = "xnemo_tiny_random_clip_vit_l14.safetensors"
VAE_NAME = "xnemo_tiny_random_sd_vae.safetensors"


def _randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Deterministic random init for modules whose layers skip their own init (comfy.ops)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


def _save(sd: dict[str, torch.Tensor], path: Path) -> None:
    import safetensors.torch

    half = {k: (v.half() if v.is_floating_point() and not k.endswith("pe") else v).contiguous() for k, v in sd.items()}
    safetensors.torch.save_file(half, str(path))


def tiny_unet_state_dict(shape: ckpt.UNetShape, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random SD-topology UNet in diffusers key names."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**shape.comfy_config(), dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    _randomize(unet, generator)
    to_comfy = ckpt.diffusers_to_comfy_keys(shape)
    comfy_sd = unet.state_dict()
    return {diffusers: comfy_sd[comfy].clone() for diffusers, comfy in to_comfy.items() if comfy in comfy_sd}


def tiny_site_state_dicts(shape: ckpt.UNetShape, generator: torch.Generator) -> tuple[dict, dict]:
    """(motion_modules, temporal_modules) weights of random X-NeMo sites under the official prefixes."""
    prefixes = ckpt.site_prefixes(shape)
    channels = ckpt.site_channels(shape)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        sites = XNeMoSites(channels)
    motion, temporal = {}, {}
    for key, value in sites.state_dict().items():
        _, k, kind, rest = key.split(".", 3)
        target, official = (motion, "motion_modules") if kind == "motion" else (temporal, "temporal_modules")
        target[f"{prefixes[int(k)].format(kind=official)}.{rest}"] = value.clone()
    return motion, temporal


def write_tiny_xnemo(folder: Path, seed: int = 0) -> dict[str, str]:
    """The four X-NeMo files (tiny, random) as .safetensors in `folder`; returns {role: file name}."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    denoising = tiny_unet_state_dict(TINY_UNET, g)
    motion, temporal = tiny_site_state_dicts(TINY_UNET, g)
    reference = {
        k: v for k, v in tiny_unet_state_dict(TINY_UNET, g).items() if not k.startswith(("conv_norm_out.", "conv_out."))
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        encoder = MotionEncoder(attention_heads=2, attention_head_dim=16).state_dict()
    files = {
        "denoising_unet": {**denoising, **motion},
        "reference_unet": reference,
        "motion_encoder": encoder,
        "temporal_module": temporal,
    }
    names = {}
    for role, sd in files.items():
        name = f"{CHECKPOINT_FILES[role]}.safetensors"
        _save(sd, folder / name)
        names[role] = name
    return names


def write_random_clip_vision(path: Path, seed: int = 0) -> None:
    """A randomly initialised CLIP ViT-L/14 vision tower in ComfyUI's clip_vision format."""
    import os

    import comfy.clip_vision

    config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")
    model = comfy.clip_vision.ClipVisionModel(config)
    _randomize(model.model, torch.Generator().manual_seed(seed))
    _save(model.model.state_dict(), path)


def write_random_vae(path: Path, seed: int = 0) -> None:
    """A randomly initialised SD1.x VAE (ComfyUI key format)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    _randomize(vae, torch.Generator().manual_seed(seed))
    _save(vae.state_dict(), path)


def write_tiny_models(models_root: Path, seed: int = 0) -> dict:
    """Write everything the demo workflow needs under `models_root/{x-nemo,clip_vision,vae}/` (skipping files that
    already exist). Returns {"x-nemo": {role: name}, "clip_vision": name, "vae": name}."""
    models_root = Path(models_root)
    xnemo_dir = models_root / MODEL_FOLDER
    names = {role: f"{stem}.safetensors" for role, stem in CHECKPOINT_FILES.items()}
    if not all((xnemo_dir / n).is_file() for n in names.values()):
        names = write_tiny_xnemo(xnemo_dir, seed)
    for folder, name, writer in (
        ("clip_vision", CLIP_VISION_NAME, write_random_clip_vision),
        ("vae", VAE_NAME, write_random_vae),
    ):
        path = models_root / folder / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("writing random %s to %s", folder, path)
            writer(path, seed)
    return {"x-nemo": names, "clip_vision": CLIP_VISION_NAME, "vae": VAE_NAME}
