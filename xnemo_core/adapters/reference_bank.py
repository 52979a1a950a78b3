"""The reference bank, writer and reader in one room.

Writer: the ReferenceNet runs once per clip at t=0 on the clean reference latent; its attn1 inputs (post-norm1
hidden states) form the bank. Reader: the denoising UNet's attn1 appends the bank to its keys/values. Both sides name
a transformer block by `block_key`.

The read is split in two halves, because no single ComfyUI hook knows both the block and the projected q/k/v
(diagram: docs/architecture.md, "The path of one attention call"):
1. `ReferenceAttentionPatch`, an attn1_patch, runs in BasicTransformerBlock before attn1: it knows the block
   (`block_key`) but sees only hidden states. It finds the block's bank entry and its attn1 module and leaves them
   as a note, `ReferenceRead`, in `CallState.pending`.
2. `ReferenceAttention`, the optimized_attention_override, runs inside that attn1's attention call: it has q/k/v but
   not the block. It takes the note (and clears it), appends the entry's keys/values (`ReferenceBank.projected`:
   the block's to_k/to_v of the bank, made once per bank) to the rows that read the reference, and attends.
The note travels on the shared `CallState` object because ComfyUI hands the patch a copy of transformer_options
(`extra_options`) and the attention call the original: a new key would be lost, the object is the same in both.
attn1_patch -> attn1 -> attention follow each other with nothing in between, so at most one note is pending; every
other attention call (attn2, the sites) finds none. With an attn1 *replace* patch (which never reaches the override),
the patch appends the bank to the keys/values itself.

The official pipeline runs it at denoising step 0 with a CFG batch (zero CLIP embedding, CLIP embedding). Only the
conditional row is ever read (the unconditional branch does plain self-attention), so one row is run here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import comfy.model_management as mm
import torch
from comfy.cli_args import args as comfy_args
from comfy.ldm.modules import attention

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

    What the reader derives from an entry is cached here for one sampling run: the entry in the compute dtype/device,
    and its attn1 keys/values (`to_k`/`to_v` of the reading block), so they are made once per run and weights, not
    once per row, window and step. `release()` (called when a run ends, see unet_patch) drops them all: the device
    copies are outside ComfyUI's memory accounting, and weights may be patched in place between runs.
    """

    def __init__(self, blocks: dict[tuple, torch.Tensor], latent_hw: tuple[int, int]):
        self.blocks = blocks
        self.latent_hw = latent_hw
        self._cast: dict[tuple, torch.Tensor] = {}
        self._projected: dict[tuple, tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def get(self, key: tuple, device, dtype) -> torch.Tensor:
        tag = (key, torch.device(device), dtype)
        if tag not in self._cast:
            self._cast[tag] = self.blocks[key].to(device=device, dtype=dtype)
        return self._cast[tag]

    def projected(
        self, key: tuple, attn: torch.nn.Module, device, dtype, generation: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """attn1's keys and values of this block's bank entry, [1, H*W, inner]. Recomputed when the weights may have
        changed: another `generation` (bumped by ComfyUI's load and hook callbacks, which patch weights in place),
        another weight object, a weight function added or removed (low-VRAM patches), another device or dtype."""
        tag = (id(attn), generation, torch.device(device), dtype, _weights_tag(attn.to_k), _weights_tag(attn.to_v))
        cached = self._projected.get(key)
        if cached is None or cached[0] != tag:
            ref = self.get(key, device, dtype)
            cached = (tag, attn.to_k(ref), attn.to_v(ref))
            self._projected[key] = cached
        return cached[1], cached[2]

    def release(self) -> None:
        """Drop every cached copy and projection (the end of a sampling run)."""
        self._cast.clear()
        self._projected.clear()

    def cached_bytes(self) -> int:
        """Bytes held by the cached copies and projections (0 after `release`)."""
        tensors = [*self._cast.values(), *(t for _, k, v in self._projected.values() for t in (k, v))]
        return sum(t.numel() * t.element_size() for t in tensors)


def _weights_tag(linear: torch.nn.Module) -> tuple:
    """What identifies a projection's weights without reading them. Weights made under torch.inference_mode (as
    ComfyUI loads them) keep no version counter, so an in-place patch of those leaves this tag unchanged: that case
    is covered by the generation (ComfyUI's patching callbacks) and by `ReferenceBank.release` between runs."""
    weight = linear.weight
    return (
        id(weight),
        weight.data_ptr(),
        None if weight.is_inference() else weight._version,
        tuple(id(f) for f in getattr(linear, "weight_function", ())),
    )


_WEIGHTS_GENERATION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_generation(unet: torch.nn.Module | None) -> int:
    """How many times ComfyUI may have patched this UNet's weights (see `note_weights_patched`)."""
    return 0 if unet is None else _WEIGHTS_GENERATION.get(unet, 0)


def note_weights_patched(patcher, *args, **kwargs) -> None:
    """ModelPatcher callback (ON_LOAD, ON_APPLY_HOOKS): ComfyUI has just (re)applied weight patches, possibly in
    place (hook LoRA keyframes, `weight_inplace_update`, copy_to_param), so projections made before are stale."""
    unet = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    if unet is not None:
        _WEIGHTS_GENERATION[unet] = _WEIGHTS_GENERATION.get(unet, 0) + 1


def banks_in(conds: dict | None) -> list[ReferenceBank]:
    """The distinct banks carried by a guider's conditioning ({name: [cond dict, ...]}, model_conds CONDConstant)."""
    found: dict[int, ReferenceBank] = {}
    for cond_list in (conds or {}).values():
        for cond in cond_list or []:
            for value in (cond.get("model_conds") or {}).values() if isinstance(cond, dict) else ():
                bank = getattr(value, "cond", None)
                if isinstance(bank, ReferenceBank):
                    found[id(bank)] = bank
    return list(found.values())


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
    out = unet(
        x,
        timesteps=t,
        context=clip_embed.to(device=device, dtype=dtype),
        transformer_options={"patches": {"attn1_patch": [writer]}},
    )
    return writer.blocks, out


def compute_reference_bank(reference_patcher, latent: torch.Tensor, clip_embed: torch.Tensor) -> ReferenceBank:
    """The bank the denoising UNet reads, rounded to float16 as the official reader does, kept on the CPU."""
    blocks, _ = run_reference_unet(reference_patcher, latent[:1], clip_embed[:1])
    stored = {k: v.to(device="cpu", dtype=torch.float16) for k, v in blocks.items()}
    return ReferenceBank(stored, (latent.shape[-2], latent.shape[-1]))


# ---------------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------------

_ATTN1_MODULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attn1_modules(unet: torch.nn.Module) -> dict[tuple, torch.nn.Module]:
    """block_key -> that transformer block's attn1, for a ComfyUI UNetModel (cached per UNet)."""
    found = _ATTN1_MODULES.get(unet)
    if found is None:
        found = {}
        groups = [("input", i, b) for i, b in enumerate(unet.input_blocks)]
        groups += [("middle", 0, unet.middle_block)]
        groups += [("output", i, b) for i, b in enumerate(unet.output_blocks)]
        for kind, block_id, block in groups:
            for layer in block:
                for depth, transformer in enumerate(getattr(layer, "transformer_blocks", ())):
                    if hasattr(transformer, "attn1"):
                        found[(kind, block_id, depth)] = transformer.attn1
        _ATTN1_MODULES[unet] = found
    return found


@dataclass
class ReferenceRead:
    """What the attn1 patch hands to the attention call right after it: the reference keys/values of this block."""

    key: tuple
    keys_values: tuple[torch.Tensor, torch.Tensor]  # attn1's to_k/to_v of the bank entry, [1, H*W, inner]
    tokens: int  # query tokens of this block (a check that the call is this block's attn1)


def prepare_reads(state, device, dtype) -> None:
    """Host side, once per UNet call (before any compiled code): every bank entry this call reads, projected by its
    block's attn1 (`state.projections`; blocks under another node's attn1 replace patch too, which
    core_patches.ReferenceReplace reads). Inside the UNet the reader then only looks tensors up: no cache keys, no
    data-dependent Python, so torch.compile traces the blocks without breaking the graph."""
    if state.bank is None or not state.reads_reference:
        return
    modules = {} if state.unet is None else attn1_modules(state.unet)
    state.projections = {
        key: state.bank.projected(key, attn, device, dtype, state.weights_generation)
        for key, attn in modules.items()
        if key in state.bank.blocks
    }


class ReferenceAttentionPatch:
    """attn1_patch of the denoising UNet: the reference read (official ReferenceAttentionControl "read" mode).

    Official: rows that use the reference attend to [own tokens ; reference tokens], the unconditional rows do plain
    self-attention. Here the patch leaves n and the keys/values as it gets them (so what other packs' attn1 patches did
    to them is kept) and marks the block; the attention call that follows (`ReferenceAttention`, ComfyUI's
    optimized_attention_override) appends the reference keys/values, projected once per bank, to the rows that read
    it, and runs the other rows on their own keys only.

    In a block with another node's attn1 *replace* patch (which bypasses the attention override) the patch does
    nothing: `core_patches.ReferenceReplace` reads the reference around the replacement. Only without the UNet at hand
    are the reference tokens appended to the keys/values here, and rows that don't read get their own tokens twice
    (the same softmax).
    """

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        state = extra_options.get(PATCH_KEY)  # unet_patch.CallState
        if state is None or state.bank is None or not state.reads_reference:
            return n, context_attn1, value_attn1
        key = block_key(extra_options)
        if key not in state.bank.blocks:
            return n, context_attn1, value_attn1
        entry = state.bank.blocks[key]
        if entry.shape[1:] != n.shape[1:]:
            raise IncompatibleModelError(
                f"the reference was encoded for a {state.bank.latent_hw[1] * 8}x{state.bank.latent_hw[0] * 8} image "
                f"but the latent being sampled has another size: use the LATENT from X-NeMo Reference Condition, or "
                f"set its width/height to the size you sample at"
            )
        if state.is_replaced(key):  # core_patches.ReferenceReplace reads the reference around the replacement
            return n, context_attn1, value_attn1
        keys_values = state.projections.get(key)
        if keys_values is None and state.unet is not None:  # not prepared (a direct call): project now
            attn = attn1_modules(state.unet).get(key)
            if attn is not None:
                keys_values = state.bank.projected(key, attn, n.device, n.dtype, state.weights_generation)
        if keys_values is not None:
            state.pending = ReferenceRead(key, keys_values, n.shape[1])
            return n, context_attn1, value_attn1
        ref = state.bank.get(key, n.device, n.dtype)
        flags = state.use_reference.to(n.device).view(-1, 1, 1)
        keys = context_attn1 if context_attn1 is not None else n
        values = value_attn1 if value_attn1 is not None else keys
        if keys.shape[1:] != ref.shape[1:] or values.shape[1:] != ref.shape[1:]:
            raise IncompatibleModelError(
                "another attn1 patch changed the self-attention keys of an X-NeMo block while "
                "an attn1 replace patch is active: remove one of the two patches"
            )
        return (
            n,
            torch.cat([keys, torch.where(flags, ref.expand_as(keys), keys)], dim=1),
            torch.cat([values, torch.where(flags, ref.expand_as(values), values)], dim=1),
        )

    def to(self, device_or_dtype):
        return self

    def __deepcopy__(self, memo):
        return self


def _default_cpu_attention(func):
    """SDPA instead of ComfyUI's CPU fallback. ComfyUI runs attention on the CPU with its memory-saving sub-quadratic
    kernel unless told otherwise; for the UNet's attn1/attn2 at X-NeMo's sizes that is about 2x slower than torch's
    SDPA (whose CPU kernel is blocked flash attention, so no larger). An explicit --use-quad/split-cross-attention
    is kept."""
    if getattr(attention, "attention_sub_quad", None) is None:
        return func
    if getattr(func, "__name__", "") != "attention_sub_quad":
        return func
    if comfy_args.use_quad_cross_attention or comfy_args.use_split_cross_attention:
        return func
    return attention.attention_pytorch


class ReferenceAttention:
    """ComfyUI `optimized_attention_override` installed for every denoising-UNet call (see unet_patch): the reference
    read of `ReferenceAttentionPatch` and, on the CPU, SDPA for ComfyUI's own default. An override another pack set
    before keeps running: it is called with the attention function this one chose."""

    def __init__(self, previous=None):
        self.previous = previous

    def _attend(self, func, q, k, v, heads, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, q, k, v, heads, *args, **kwargs)
        return func(q, k, v, heads, *args, **kwargs)

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        if q.device.type == "cpu":
            func = _default_cpu_attention(func)
        state = (kwargs.get("transformer_options") or {}).get(PATCH_KEY)
        read = getattr(state, "pending", None)
        if read is None:
            if (
                k.shape[1] == 1
                and self.previous is None
                and not args
                and kwargs.get("mask") is None
                and not kwargs.get("skip_reshape")
                and not kwargs.get("skip_output_reshape")
            ):
                # attn2 on X-NeMo's single CLIP token: a softmax over one key is exactly 1, the output is v itself
                return v.expand(-1, q.shape[1], -1).to(q.dtype)
            return self._attend(func, q, k, v, heads, *args, **kwargs)
        state.pending = None
        # fewer queries than tokens is fine (TomePatchModel merges the queries, never the keys)
        bad_shape = q.shape[1] > read.tokens or q.shape[0] != k.shape[0]
        if bad_shape or args or kwargs.get("mask") is not None or kwargs.get("skip_reshape"):
            raise IncompatibleModelError(
                "an X-NeMo block's self-attention was called in an unexpected form (mask, pre-shaped heads, more "
                "queries than tokens, or query rows split into tiles): another custom node patches attn1 in a way "
                "X-NeMo's reference read does not support; disable it for X-NeMo models"
            )
        k_ref, v_ref = (t.to(device=q.device, dtype=q.dtype) for t in read.keys_values)
        outs = []
        for start, stop, reads in state.segments:
            qs, ks, vs = q[start:stop], k[start:stop], v[start:stop]
            if reads:
                rows = stop - start
                ks = torch.cat([ks, k_ref.expand(rows, -1, -1)], dim=1)
                vs = torch.cat([vs, v_ref.expand(rows, -1, -1)], dim=1)
            outs.append(self._attend(func, qs, ks, vs, heads, *args, **kwargs))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
