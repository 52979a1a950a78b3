"""The reference bank, writer and reader in one room.

Writer: the ReferenceNet runs once per clip at t=0 on the clean reference latent; its attn1 inputs (post-norm1
hidden states) form the bank. Reader: an attn1 patch on the denoising UNet appends the bank to attn1's keys/values.
Both sides name a transformer block by `block_key`.

The official pipeline runs it at denoising step 0 with a CFG batch (zero CLIP embedding, CLIP embedding). Only the
conditional row is ever read (the unconditional branch does plain self-attention), so one row is run here.
"""

from __future__ import annotations

import comfy.model_management as mm
import torch

from ..pure.constants import PATCH_KEY
from ..pure.errors import IncompatibleModelError


def block_key(extra_options: dict) -> tuple:
    """(block kind, block id, depth index): how the writer and the reader name a transformer block."""
    return (*extra_options["block"], extra_options.get("block_index", 0))


class ReferenceBank:
    """ReferenceNet attn1 inputs (post-norm1 hidden states) per transformer block, computed once per run.

    `blocks` maps ComfyUI's (block kind, block id, depth index) to a [1, H*W, C] tensor. Kept in float16 like the
    official reader (ReferenceAttentionControl.update casts the bank to fp16); no `__eq__`, so two conditionings carry
    "the same bank" only when they hold the same object (CONDConstant batching).
    """

    def __init__(self, blocks: dict[tuple, torch.Tensor], latent_hw: tuple[int, int]):
        self.blocks = blocks
        self.latent_hw = latent_hw

    def get(self, key: tuple, device, dtype) -> torch.Tensor:
        return self.blocks[key].to(device=device, dtype=dtype)


class BankWriter:
    """attn1_patch that records norm1(hidden states) per (block kind, block id, depth index), unchanged."""

    def __init__(self):
        self.blocks: dict[tuple, torch.Tensor] = {}

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        self.blocks[block_key(extra_options)] = n.detach()
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


class ReferenceAttentionPatch:
    """attn1_patch: keys/values = [own tokens ; reference tokens] for rows that use the reference.

    Rows that don't (the unconditional branch) get [own ; own], which is exactly plain self-attention (every key
    twice, softmax weights halve) while keeping the batch one tensor.
    """

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        state = extra_options.get(PATCH_KEY)  # unet_patch.CallState
        if state is None or state.bank is None or not bool(state.use_reference.any()):
            return n, context_attn1, value_attn1
        key = block_key(extra_options)
        if key not in state.bank.blocks:
            return n, context_attn1, value_attn1
        ref = state.bank.get(key, n.device, n.dtype)
        if ref.shape[1:] != n.shape[1:]:
            raise IncompatibleModelError(
                f"the reference was encoded for a {state.bank.latent_hw[1] * 8}x{state.bank.latent_hw[0] * 8} image but "
                f"the latent being sampled has another size: use the LATENT from X-NeMo Reference Condition, or set "
                f"its width/height to the size you sample at"
            )
        flags = state.use_reference.to(n.device).view(-1, 1, 1)
        extra = torch.where(flags, ref.expand_as(n), n)
        kv = torch.cat([n, extra], dim=1)
        return n, kv, kv

    def to(self, device_or_dtype):
        return self

    def __deepcopy__(self, memo):
        return self
