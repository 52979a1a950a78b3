"""The four official X-NeMo files: safe reading, telling them apart, and mapping their keys onto ComfyUI's UNet.

The official loader uses `strict=False` for both denoising files, so a renamed prefix silently turns the motion or
temporal layers into no-ops. Here every key is accounted for: missing or unexpected keys are an error that names
them and the file.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..pure.constants import CHECKPOINT_FILES, MODEL_FOLDER
from ..pure.errors import CheckpointError
from ..pure.keys import check_keys, listing

SAFE_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SITE_KINDS = ("motion_modules", "temporal_modules")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint into CPU tensors without executing any pickled code.

    `.safetensors` is read directly; `.pth` goes through `torch.load(weights_only=True)`, which refuses any pickle
    that would import or call code. Every failure is a CheckpointError that names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"X-NeMo checkpoint not found: {path}. Put the official files in ComfyUI/models/{MODEL_FOLDER}/ "
            f"({', '.join(n + '.pth' for n in CHECKPOINT_FILES.values())}) and pick them in Load X-NeMo."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): the download was interrupted. Download it again.")
    suffix = path.suffix.lower()
    try:
        sd = _load_safetensors(path) if suffix in SAFE_SUFFIXES else _load_weights_only(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Refused to load {path.name}: it contains pickled Python objects beyond plain tensors, which could run "
            f"code on load ({str(e).splitlines()[0][:200]}). Use the official file, which holds only tensors (or a "
            f".safetensors copy of it made with scripts/convert_to_safetensors.py)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(
            f"Could not read {path.name}: the file is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}). Download it again."
        ) from None
    return _as_flat_state_dict(sd, path.name)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors' own SafetensorError: a bad header or a file cut short
        if isinstance(e, (OSError, MemoryError)):
            raise
        raise ValueError(str(e)) from None


def _load_weights_only(path: Path):
    """torch.load that refuses code. Its refusal message is a page of advice on how to load the file anyway; keep
    only the line naming what the pickle tried to import.

    Files in torch's zip format (all recent ones) are memory-mapped: the tensors read the file through the page cache
    instead of a private copy, so building the models from them does not hold the weights twice."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
        reason = next(
            (line for line in lines if "Unsupported global" in line or "WeightsUnpickler" in line),
            lines[0] if lines else "not plain tensors",
        )
        raise pickle.UnpicklingError(
            reason.split(" Please use", 1)[0].removeprefix("WeightsUnpickler error: ")
        ) from None


def _as_flat_state_dict(obj, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict of tensors: wrong file?")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor: wrong file?")
        out[key.removeprefix("module.")] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# What each file is
# ---------------------------------------------------------------------------------------------------------------


def identify(sd: dict[str, torch.Tensor]) -> str:
    """Which of the four X-NeMo files a state dict is (a key of CHECKPOINT_FILES), or "unknown"."""
    keys = sd.keys()
    if any(k.startswith("model.conv1.") for k in keys) and "final_proj.weight" in keys:
        return "motion_encoder"
    if keys and all(".temporal_modules." in k for k in keys):
        return "temporal_module"
    if "conv_in.weight" in keys:
        if any(".motion_modules." in k for k in keys):
            return "denoising_unet"
        if "conv_out.weight" not in keys and not any(".temporal_modules." in k for k in keys):
            return "reference_unet"
    return "unknown"


def expect_kind(sd: dict[str, torch.Tensor], kind: str, name: str) -> None:
    found = identify(sd)
    if found != kind:
        hint = f"it looks like {CHECKPOINT_FILES[found]}" if found in CHECKPOINT_FILES else "it is not an X-NeMo file"
        raise CheckpointError(
            f"{name} was given as the {kind.replace('_', ' ')} but {hint}. Pick {CHECKPOINT_FILES[kind]}.pth "
            f"(or .safetensors) for this input."
        )


def check_float_dtypes(sd: dict[str, torch.Tensor], name: str) -> None:
    """Weights must be floating point (int64 counters such as BatchNorm's num_batches_tracked are allowed)."""
    bad = [k for k, v in sd.items() if not v.is_floating_point() and not k.endswith("num_batches_tracked")]
    if bad:
        raise CheckpointError(
            f"{name} stores weights as {sd[bad[0]].dtype} ({listing(bad)}); X-NeMo weights are float16/bfloat16/"
            f"float32. The file is damaged or was quantised by another tool: use the official file."
        )


# ---------------------------------------------------------------------------------------------------------------
# Denoising / reference UNet: diffusers keys -> ComfyUI UNet config and keys
# ---------------------------------------------------------------------------------------------------------------

SITE_KEY = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.(motion_modules|temporal_modules)\.(\d+)\.(.+)$")


def split_sites(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Split a denoising-UNet state dict into the plain SD UNet part and the X-NeMo site weights."""
    base: dict[str, torch.Tensor] = {}
    sites: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in SITE_KINDS}
    for key, value in sd.items():
        m = SITE_KEY.match(key)
        if m:
            sites[m.group(2)][key] = value
        else:
            base[key] = value
    return base, sites


def _count(sd, pattern: str) -> int:
    n = 0
    while any(k.startswith(pattern.format(n)) for k in sd):
        n += 1
    return n


@dataclass(frozen=True, kw_only=True)
class UNetShape:
    """Sizes of an SD1.5-topology UNet read from its diffusers weights (tiny and full-size checkpoints alike)."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    context_dim: int
    in_channels: int
    attention_levels: tuple[bool, ...]
    has_output: bool

    def comfy_config(self) -> dict:
        levels = len(self.channel_mult)
        depth_in, depth_out = [], []
        for level in range(levels):
            d = 1 if self.attention_levels[level] else 0
            depth_in += [d] * self.num_res_blocks
        for level in range(levels):  # ComfyUI pops this list from the end while building the up path
            d = 1 if self.attention_levels[level] else 0
            depth_out += [d] * (self.num_res_blocks + 1)
        return {
            "use_checkpoint": False,
            "image_size": 32,
            "out_channels": 4,
            "use_spatial_transformer": True,
            "legacy": False,
            "adm_in_channels": None,
            "in_channels": self.in_channels,
            "model_channels": self.model_channels,
            "num_res_blocks": [self.num_res_blocks] * levels,
            "transformer_depth": depth_in,
            "channel_mult": list(self.channel_mult),
            "transformer_depth_middle": 1,
            "use_linear_in_transformer": False,
            "context_dim": self.context_dim,
            "num_heads": 8,
            "num_head_channels": -1,
            "transformer_depth_output": depth_out,
            "use_temporal_attention": False,
            "use_temporal_resblock": False,
        }


def site_channels(shape: UNetShape) -> list[int]:
    """Width of each X-NeMo site, in `site_prefixes` order (a site takes the width of the ResNet it follows)."""
    levels = len(shape.channel_mult)
    out = []
    for prefix in site_prefixes(shape):
        block = prefix.split(".{kind}")[0]
        if block == "mid_block":
            level = levels - 1
        else:
            level = int(block.split(".")[1])
            if block.startswith("up_blocks"):
                level = levels - 1 - level
        out.append(shape.model_channels * shape.channel_mult[level])
    return out


def unet_shape(sd: dict[str, torch.Tensor], name: str) -> UNetShape:
    """Read an SD1.5-topology UNet's sizes from diffusers-format weights (8 heads, as in the official config)."""
    try:
        model_channels = sd["conv_in.weight"].shape[0]
        in_channels = sd["conv_in.weight"].shape[1]
        levels = _count(sd, "down_blocks.{}.")
        num_res_blocks = _count(sd, "down_blocks.0.resnets.{}.")
        mult, attn = [], []
        for level in range(levels):
            out_ch = sd[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0]
            mult.append(out_ch // model_channels)
            attn.append(f"down_blocks.{level}.attentions.0.proj_in.weight" in sd)
        context_dim = sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"{name} is not an SD1.5-style UNet: key {e.args[0]} is missing.") from None
    if levels == 0 or num_res_blocks == 0:
        raise CheckpointError(f"{name} has no down blocks: not an X-NeMo UNet file.")
    return UNetShape(
        model_channels=model_channels,
        channel_mult=tuple(mult),
        num_res_blocks=num_res_blocks,
        context_dim=context_dim,
        in_channels=in_channels,
        attention_levels=tuple(attn),
        has_output="conv_out.weight" in sd,
    )


def diffusers_to_comfy_keys(shape: UNetShape) -> dict[str, str]:
    """Map diffusers UNet keys to ComfyUI `diffusion_model` keys for this shape (ComfyUI's own table)."""
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(shape.comfy_config())
    if not shape.has_output:
        mapping = {k: v for k, v in mapping.items() if not k.startswith(("conv_norm_out.", "conv_out."))}
    return mapping


def convert_unet_keys(
    sd: dict[str, torch.Tensor], shape: UNetShape, name: str, expected: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """Diffusers UNet weights -> ComfyUI keys, strictly: every key of the file and of the model accounted for."""
    mapping = diffusers_to_comfy_keys(shape)
    unknown = sorted(set(sd) - set(mapping))
    converted = {mapping[k]: v for k, v in sd.items() if k in mapping}
    if unknown:
        missing_in_file = sorted(set(expected) - set(converted))
        raise CheckpointError(
            f"{name} has {len(unknown)} keys that are not part of an SD1.5-style UNet: {listing(unknown)}"
            + (f"; and lacks {listing(missing_in_file)}" if missing_in_file else "")
            + ". Use the official X-NeMo files."
        )
    check_keys(expected, converted, name)
    return converted


# ---------------------------------------------------------------------------------------------------------------
# X-NeMo sites: official prefixes in diffusers order
# ---------------------------------------------------------------------------------------------------------------


def site_prefixes(shape: UNetShape) -> list[str]:
    """The 21 (for SD1.5) site prefixes in diffusers order: down blocks, mid block, up blocks."""
    levels = len(shape.channel_mult)
    out = [f"down_blocks.{i}.{{kind}}.{j}" for i in range(levels) for j in range(shape.num_res_blocks)]
    out.append("mid_block.{kind}.0")
    out += [f"up_blocks.{i}.{{kind}}.{j}" for i in range(levels) for j in range(shape.num_res_blocks + 1)]
    return out
