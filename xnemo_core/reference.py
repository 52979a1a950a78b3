"""The ReferenceNet pass: run once per clip at t=0 on the clean reference latent; its attn1 inputs form the bank.

The official pipeline runs it at denoising step 0 with a CFG batch (zero CLIP embedding, CLIP embedding). Only the
conditional row is ever read (the unconditional branch does plain self-attention), so one row is run here.
"""

from __future__ import annotations

import comfy.model_management as mm
import torch

from .unet_patch import ReferenceBank


class BankWriter:
    """attn1_patch that records norm1(hidden states) per (block kind, block id, depth index), unchanged."""

    def __init__(self):
        self.blocks: dict[tuple, torch.Tensor] = {}

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        key = (*extra_options["block"], extra_options.get("block_index", 0))
        self.blocks[key] = n.detach()
        return n, context_attn1, value_attn1


@torch.no_grad()
def run_reference_unet(reference_patcher, latent: torch.Tensor, clip_embed: torch.Tensor):
    """Run the ReferenceNet at timestep 0. latent: [B, 4, h, w], already scaled by the VAE factor (0.18215 for SD);
    clip_embed: [B, 1, 768]. Returns (bank entries {key: [B, h_l*w_l, C]}, last feature map [B, C0, h, w])."""
    mm.load_models_gpu([reference_patcher])
    unet = reference_patcher.model
    device = reference_patcher.load_device
    dtype = next(unet.parameters()).dtype
    manual_cast = mm.unet_manual_cast(dtype, device)
    dtype = manual_cast or dtype
    writer = BankWriter()
    x = latent.to(device=device, dtype=dtype)
    t = torch.zeros(x.shape[0], device=device, dtype=torch.float32)
    out = unet(x, timesteps=t, context=clip_embed.to(device=device, dtype=dtype),
               transformer_options={"patches": {"attn1_patch": [writer]}})
    return writer.blocks, out


def compute_reference_bank(reference_patcher, latent: torch.Tensor, clip_embed: torch.Tensor) -> ReferenceBank:
    """The bank the denoising UNet reads, rounded to float16 as the official reader does, kept on the CPU."""
    blocks, _ = run_reference_unet(reference_patcher, latent[:1], clip_embed[:1])
    stored = {k: v.to(device="cpu", dtype=torch.float16) for k, v in blocks.items()}
    return ReferenceBank(stored, (latent.shape[-2], latent.shape[-1]))
