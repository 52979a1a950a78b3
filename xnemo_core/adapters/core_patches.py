"""Other nodes' MODEL patches on an X-NeMo model: what runs, what changes meaning, what is refused (README "Works with
core nodes" is the table; tests/comfy/test_core_patches.py enforces it).

Two things live here:
- `ReferenceReplace`, the reference read around another node's attn1 *replace* patch. Such a patch replaces the whole
  self-attention of its block, so X-NeMo cannot append the reference inside ComfyUI's attention call there. Instead the
  replacement is called once per run of rows: rows that read the reference get [own ; reference] keys and values, the
  others (the unconditional branch) their own only, each call with `cond_or_uncond` narrowed to its rows. A
  replacement that returns one row per *key* instead of one per query is an identity attention (PerturbedAttention
  Guidance returns `v`): the frame's own rows are kept, so PAG's perturbed branch is "each token copies its own
  value", the reference not read in that block, which is PAG's meaning of a perturbed self-attention.
- `refusals`, the checks made when sampling starts: nodes whose meaning cannot hold on X-NeMo's frames-as-batch
  latents, its conditioning or its schedule, each named with the reason and what to do.
"""

from __future__ import annotations

import torch

from ..pure.constants import PATCH_KEY
from ..pure.errors import IncompatibleModelError
from .reference_bank import attn1_modules, block_key

# Node -> the module its patch functions come from (closures keep their defining module), and why it is refused.
_REFUSED = {
    "comfy_extras.nodes_perpneg": (
        "PerpNeg / PerpNegGuider",
        "it samples an extra empty text prompt, and X-NeMo has no text prompt (its negative is the zero CLIP "
        "embedding with the reference's own motion, which PerpNeg's empty_conditioning cannot carry)",
    ),
    "comfy_extras.nodes_hypertile": (
        "HyperTile",
        "it splits each self-attention's queries into tiles, and X-NeMo's reference read attends every query of a "
        "frame to the whole reference",
    ),
}
# Refused only when a step runs more than one window (Sample Animation with frames > context_length): by module, or
# by the key a node's wrappers are registered under.
_ONE_WINDOW_ONLY = {
    "comfy_extras.nodes_sag": (
        "SelfAttentionGuidance",
        "it keeps the attention map of the last UNet call only, which is one window's frames",
    ),
    "easycache": (  # a wrapper key: LazyCache lives in the same module but caches whole steps, windows included
        "EasyCache",
        "it reuses the previous UNet call's output change, which belongs to another window's frames",
    ),
}


def _modules(value, seen: set) -> set[str]:
    """Modules of every callable in model_options (patch lists, replace dicts, wrappers, cfg functions)."""
    found: set[str] = set()
    if id(value) in seen:
        return found
    seen.add(id(value))
    if isinstance(value, dict):
        for item in value.values():
            found |= _modules(item, seen)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found |= _modules(item, seen)
    elif callable(value) and not isinstance(value, torch.nn.Module):
        module = getattr(value, "__module__", None) or type(value).__module__
        found.add(module)
    return found


def refusals(
    model_options: dict, schedule_is_xnemo: bool, windows: int = 1, guider=None, wrappers: dict | None = None
) -> list[str]:
    """Why this model cannot be sampled as X-NeMo, one message per refused node; empty when it can.
    `windows`: UNet calls per CFG branch and step (Sample Animation's windows; 1 for core samplers); `guider`: the
    CFGGuider running (a guider node such as PerpNegGuider is a class of its own, not a patch); `wrappers`: the
    ModelPatcher's own wrappers (`model.wrappers`), which ComfyUI merges into model_options only when sampling."""
    wrappers = {**((model_options.get("transformer_options") or {}).get("wrappers") or {}), **(wrappers or {})}
    messages = []
    if model_options.get("context_handler") is not None:
        messages.append(
            "core Context Windows cannot run an X-NeMo model: remove the Context Windows node and sample with X-NeMo "
            "Sample Animation, which runs the official overlapping windows itself (context_length, context_overlap)"
        )
    patcher = getattr(guider, "model_patcher", None)
    extra_devices = patcher.get_additional_models_with_key("multigpu") if patcher is not None else []
    if extra_devices or len(model_options.get("multigpu_clones") or {}) > 1:
        # ComfyUI >= 0.4's MultiGPU CFG Split deep-clones the model per device and splits the cond/uncond rows; no
        # multi-GPU run has shown that every clone gets the reference bank and motion with its rows.
        messages.append(
            "MultiGPU CFG Split is not supported with X-NeMo yet (no multi-GPU run has proven that each device gets "
            "the reference bank and motion with its rows): remove the MultiGPU CFG Split node; X-NeMo Sample "
            "Animation runs on one device"
        )
    if not schedule_is_xnemo:
        messages.append(
            "ModelSamplingDiscrete (or another model-sampling node) replaced X-NeMo's noise schedule (scaled-linear "
            "betas 0.00085..0.02, epsilon prediction), which the X-NeMo weights were trained on: remove that node"
        )
    modules = _modules(model_options, set()) | _modules(wrappers, set())
    if guider is not None:
        modules.add(type(guider).__module__)
    for module, (node, why) in _REFUSED.items():
        if module in modules:
            messages.append(f"{node} cannot run on an X-NeMo model: {why}. Remove it")
    if windows > 1:
        modules |= {key for by_key in wrappers.values() for key in by_key}
        for module, (node, why) in _ONE_WINDOW_ONLY.items():
            if module in modules:
                messages.append(
                    f"{node} cannot run with {windows} context windows per step: {why}. Remove {node}, or sample "
                    f"at most context_length frames (one window)"
                )
    return messages


def refuse(
    model_options: dict, schedule_is_xnemo: bool, windows: int = 1, guider=None, wrappers: dict | None = None
) -> None:
    messages = refusals(model_options, schedule_is_xnemo, windows, guider, wrappers)
    if messages:
        raise IncompatibleModelError("; ".join(messages))


class ReferenceReplace:
    """Wraps another node's attn1 replace patch so the block still reads the reference (see the module docstring)."""

    def __init__(self, replacement):
        self.replacement = replacement

    def __call__(self, q, k, v, extra_options):
        state = extra_options.get(PATCH_KEY)  # unet_patch.CallState
        key = block_key(extra_options)
        bank = getattr(state, "bank", None)
        attn = None if getattr(state, "unet", None) is None else attn1_modules(state.unet).get(key)
        if bank is None or not state.reads_reference or key not in bank.blocks or attn is None:
            return self.replacement(q, k, v, extra_options)
        if not q.shape[0] == k.shape[0] == v.shape[0] == len(state.use_reference):
            raise IncompatibleModelError(
                f"an attn1 replace patch on X-NeMo block {key} got {q.shape[0]} query rows for "
                f"{len(state.use_reference)} latent rows: another node changed the batch before it; remove that node"
            )
        keys_values = state.projections.get(key)  # prepared on the host (reference_bank.prepare_reads)
        if keys_values is None:
            keys_values = bank.projected(key, attn, q.device, q.dtype, state.weights_generation)
        k_ref, v_ref = (t.to(device=q.device, dtype=q.dtype) for t in keys_values)
        chunks = list(extra_options.get("cond_or_uncond") or [])
        per_chunk = q.shape[0] // len(chunks) if chunks and q.shape[0] % len(chunks) == 0 else 0
        outs = []
        for start, stop, reads in state.segments:
            options = extra_options
            if per_chunk and start % per_chunk == 0 and stop % per_chunk == 0:
                options = {**extra_options, "cond_or_uncond": chunks[start // per_chunk : stop // per_chunk]}
            qs, ks, vs = q[start:stop], k[start:stop], v[start:stop]
            if reads:
                rows = stop - start
                ks = torch.cat([ks, k_ref.expand(rows, -1, -1)], dim=1)
                vs = torch.cat([vs, v_ref.expand(rows, -1, -1)], dim=1)
            out = self.replacement(qs, ks, vs, options)
            if out.shape[1] != qs.shape[1]:
                if out.shape[1] != ks.shape[1]:
                    raise IncompatibleModelError(
                        f"an attn1 replace patch on X-NeMo block {key} returned {out.shape[1]} tokens for "
                        f"{qs.shape[1]} queries and {ks.shape[1]} keys: X-NeMo cannot place its output; remove the "
                        f"node that set it"
                    )
                out = out[:, : qs.shape[1]]  # identity attention (returns v): the frame's own values
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def wrap_replace_patches(transformer_options: dict) -> tuple[dict, frozenset]:
    """transformer_options with every attn1 replace patch wrapped in `ReferenceReplace`, and the replaced blocks
    (keys as ComfyUI stores them: (kind, id) or (kind, id, depth index))."""
    replace = transformer_options.get("patches_replace") or {}
    attn1 = replace.get("attn1") or {}
    if not attn1:
        return transformer_options, frozenset()
    wrapped = {k: f if isinstance(f, ReferenceReplace) else ReferenceReplace(f) for k, f in attn1.items()}
    options = {**transformer_options, "patches_replace": {**replace, "attn1": wrapped}}
    return options, frozenset(attn1)
