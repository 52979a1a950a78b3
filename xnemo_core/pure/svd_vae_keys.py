"""Stable Video Diffusion VAE weights: the diffusers file -> the layout ComfyUI builds its temporal decoder from.

The official X-NeMo loads `vae/` of stable-video-diffusion-img2vid(-xt) with diffusers (AutoencoderKLTemporalDecoder).
ComfyUI 0.3.75 builds the same network (its `temporal_ae.VideoDecoder`) only from Stability's own key names, the
`first_stage_model.*` part of `svd.safetensors` / `svd_xt.safetensors`, recognised by `decoder.mid.block_1.mix_factor`.
Given the diffusers names, core Load VAE builds a 4x upscaler VAE with almost every weight missing, and says so only
in the console. This module renames the diffusers tensors (no value changes, except the encoder's 1x1 `quant_conv`,
which ComfyUI's SVD encoder does not have and which is folded into the encoder's last convolution).
"""

from __future__ import annotations

import re

import torch

DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.time_mixer.mix_factor"
COMFY_MARKER = "decoder.mid.block_1.mix_factor"
CHECKPOINT_PREFIX = "first_stage_model."

# Block-level renames, applied to the part after "encoder." / "decoder.". diffusers counts decoder up blocks from the
# bottom (up_blocks.0 is the 8x-downscaled level), Stability from the top (up.3 is that level).
_BLOCKS = [
    (r"^conv_norm_out\.", "norm_out."),
    (r"^time_conv_out\.", "conv_out.time_mix_conv."),
    (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"down.{m[1]}.block.{m[2]}."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"down.{m[1]}.downsample."),
    (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"up.{3 - int(m[1])}.block.{m[2]}."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{3 - int(m[1])}.upsample."),
    (r"^mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
    (r"^mid_block\.attentions\.0\.", "mid.attn_1."),
]
# Layer-level renames inside a block. A decoder ResNet is a spatial block plus a temporal (3x1x1) block mixed by a
# learned sigmoid(mix_factor); Stability keeps the spatial one flat and the temporal one as `time_stack`, an
# openaimodel ResBlock (in_layers = norm, SiLU, conv; out_layers = norm, SiLU, dropout, conv).
_LAYERS = [
    (r"\.spatial_res_block\.", "."),
    (r"\.temporal_res_block\.norm1\.", ".time_stack.in_layers.0."),
    (r"\.temporal_res_block\.conv1\.", ".time_stack.in_layers.2."),
    (r"\.temporal_res_block\.norm2\.", ".time_stack.out_layers.0."),
    (r"\.temporal_res_block\.conv2\.", ".time_stack.out_layers.3."),
    (r"\.time_mixer\.mix_factor$", ".mix_factor"),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".proj_out."),
]
_PLAIN = re.compile(r"^(conv_in|conv_out|norm_out|conv_out\.time_mix_conv)\.(weight|bias)$")
_BLOCK = re.compile(r"^(down\.\d+\.(block\.\d+|downsample)|up\.\d+\.(block\.\d+|upsample)|mid\.(block_\d|attn_1))\.")


class SVDVaeKeyError(ValueError):
    """The file is not a complete diffusers SVD VAE (keys this mapping does not know)."""


def is_diffusers_svd(sd: dict) -> bool:
    return DIFFUSERS_MARKER in sd


def is_comfy_svd(sd: dict) -> bool:
    return COMFY_MARKER in sd


def comfy_key(key: str) -> str:
    """One diffusers AutoencoderKLTemporalDecoder key -> its ComfyUI / Stability name."""
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise SVDVaeKeyError(f"unknown key {key!r}")
    for pattern, repl in _BLOCKS:
        rest = re.sub(pattern, repl, rest)
    for pattern, repl in _LAYERS:
        rest = re.sub(pattern, repl, rest)
    if not (_PLAIN.match(rest) or _BLOCK.match(rest)):
        raise SVDVaeKeyError(f"unknown key {key!r}")
    return f"{side}.{rest}"


def diffusers_to_comfy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers SVD VAE state dict for `comfy.sd.VAE`; the tensors are the same objects (no copy)."""
    out, unknown = {}, []
    for key, value in sd.items():
        if key.startswith("quant_conv."):
            continue
        try:
            new = comfy_key(key)
        except SVDVaeKeyError:
            unknown.append(key)
            continue
        if ".attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # diffusers Linear q/k/v/out -> Stability 1x1 Conv2d
        out[new] = value
    if unknown:
        raise SVDVaeKeyError(
            f"not a diffusers Stable Video Diffusion VAE: {len(unknown)} unknown keys, e.g. {', '.join(unknown[:5])}"
        )
    if "quant_conv.weight" in sd:
        out.update(
            fold_quant_conv(
                sd["encoder.conv_out.weight"],
                sd["encoder.conv_out.bias"],
                sd["quant_conv.weight"],
                sd["quant_conv.bias"],
            )
        )
    return out


def fold_quant_conv(
    conv_w: torch.Tensor, conv_b: torch.Tensor, quant_w: torch.Tensor, quant_b: torch.Tensor
) -> dict[str, torch.Tensor]:
    """encoder.conv_out followed by the 1x1 quant_conv, as one convolution (ComfyUI's SVD encoder has no quant_conv).

    An identity quant_conv leaves conv_out untouched (same tensors, same dtype). Otherwise the product is computed in
    float64 and kept in float32: rounding it to a float16 file's dtype would add an error the composition does not have.
    """
    q = quant_w.double().reshape(quant_w.shape[0], quant_w.shape[1])
    if torch.equal(q, torch.eye(q.shape[0], dtype=q.dtype)) and not quant_b.any():
        return {"encoder.conv_out.weight": conv_w, "encoder.conv_out.bias": conv_b}
    weight = torch.einsum("oc,cikl->oikl", q, conv_w.double())
    bias = q @ conv_b.double() + quant_b.double()
    dtype = torch.float32 if conv_w.dtype in (torch.float16, torch.bfloat16) else conv_w.dtype
    return {"encoder.conv_out.weight": weight.to(dtype), "encoder.conv_out.bias": bias.to(dtype)}


def strip_checkpoint_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE part of a whole SVD checkpoint (`first_stage_model.*`), or the dict unchanged if it has none."""
    if not any(k.startswith(CHECKPOINT_PREFIX) for k in sd):
        return sd
    return {k[len(CHECKPOINT_PREFIX) :]: v for k, v in sd.items() if k.startswith(CHECKPOINT_PREFIX)}
