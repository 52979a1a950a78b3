"""X-NeMo on ComfyUI's own UNet, through ModelPatcher extension points only.

What gets attached to a clone of the denoising MODEL, all under the key "xnemo":
- the 21 `XNeMoSite` modules (motion cross-attention + temporal attention), in their own ModelPatcher registered as
  an additional model (ComfyUI loads/offloads/casts them with the UNet) and placed into the UNet's block lists by a
  PatcherInjection only while the model is patched;
- a `forward_timestep_embed_patch` so the sites receive `transformer_options` (per-row motion tokens, frame count);
- an APPLY_MODEL wrapper that moves X-NeMo's conditioning (`xnemo_motion`, `xnemo_ref`, `xnemo_bank`, carried in
  CONDITIONING `model_conds`) from the model kwargs into `transformer_options["xnemo"]` (a `CallState`), with
  everything the call needs worked out on the host before the UNet runs (row segments, projected reference
  keys/values), so a compiled UNet (Sample Animation's `compile`) traces without graph breaks. The batch it gets is
  len(cond_or_uncond) chunks of one window's frames (sampling.py cut them), so frames per chunk = rows // chunks: the
  length the temporal layers attend over (under core context windows, checked against the frame ids the rows carry);
- an `attn1_patch` and, per call, an `optimized_attention_override` (reference_bank) through which rows that use the
  reference attend to [own keys ; reference keys] and the others (the unconditional branch) do plain self-attention;
- the X-NeMo noise schedule (scaled-linear betas 0.00085..0.02, computed in float32 as the official DDIM) as a
  `model_sampling` object patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import GEGLU, CrossAttention, optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, SpatialTransformer

from ..pure.constants import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, PATCH_KEY
from ..pure.errors import IncompatibleModelError
from ..pure.layers import XNeMoSite, geglu, sdpa_attention
from . import core_patches
from .reference_bank import (
    ReferenceAttention,
    ReferenceAttentionPatch,
    ReferenceBank,
    banks_in,
    note_weights_patched,
    prepare_reads,
    weights_generation,
)

KEY = PATCH_KEY
MOTION_COND = "xnemo_motion"  # CONDRegular [F, 32, 16]: motion tokens per frame
REF_COND = "xnemo_ref"  # CONDRegular [F, 1]: 1 where the row reads the reference bank
BANK_COND = "xnemo_bank"  # CONDConstant(ReferenceBank): same object on positive and negative, so they batch
FRAME_COND = "xnemo_frame"  # CONDRegular [F] int64: clip frame index of each row, to catch mis-sliced windows


class XNeMoModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """Epsilon prediction on X-NeMo's schedule: betas linspace(sqrt(0.00085), sqrt(0.02))**2 in float32, like
    diffusers' DDIMScheduler (SD1.5 uses beta_end 0.012)."""

    def __init__(self):
        super().__init__()
        betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        self._register_schedule(given_betas=betas, linear_start=BETA_START, linear_end=BETA_END)


@dataclass(kw_only=True)
class CallState:
    """What the sites and the reference read need for one UNet call (rows aligned with x)."""

    motion: torch.Tensor  # [rows, 32, 16]
    use_reference: torch.Tensor  # [rows] bool
    bank: ReferenceBank | None
    frames: int  # frames per chunk (temporal attention runs over these)
    unet: torch.nn.Module | None = None  # the UNetModel being run (finds each block's attn1)
    replaced: frozenset = frozenset()  # blocks with another node's attn1 replace patch ((kind, id) or block_key)
    weights_generation: int = 0  # reference_bank.weights_generation of `unet` when the call started
    pending: object = None  # reference_bank.ReferenceRead handed from the attn1 patch to attention
    segments: list = field(default_factory=list)  # (start, stop, reads reference) runs of rows
    projections: dict = field(default_factory=dict)  # block key -> reference (keys, values), see prepare_reads

    def __post_init__(self):
        flags = self.use_reference.tolist()
        self.segments = []
        for i, reads in enumerate(flags):
            if self.segments and self.segments[-1][2] == reads:
                self.segments[-1][1] = i + 1
            else:
                self.segments.append([i, i + 1, reads])
        self.reads_reference = any(flags)

    def is_replaced(self, key: tuple) -> bool:
        """Another node replaces this block's attn1 (core_patches.ReferenceReplace reads the reference there)."""
        return bool(self.replaced) and (key in self.replaced or key[:2] in self.replaced)


# ---------------------------------------------------------------------------------------------------------------
# Injection of the sites into the UNet block lists
# ---------------------------------------------------------------------------------------------------------------


def site_slots(unet) -> list[tuple[torch.nn.Sequential, int]]:
    """(block list, insert position) for every site, in diffusers order: after the last SpatialTransformer of a block,
    else after its first ResBlock (before any Up/Downsample); blocks with neither (conv_in, Downsample) get none."""
    slots = []
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        kinds = [type(m) for m in block]
        if SpatialTransformer in kinds:
            slots.append((block, len(kinds) - kinds[::-1].index(SpatialTransformer)))
        elif ResBlock in kinds:
            slots.append((block, kinds.index(ResBlock) + 1))
    return slots


class SiteInjection:
    """Inserts the site modules while the model is patched and removes exactly those (by identity) on eject."""

    def __init__(self, sites_patcher: comfy.model_patcher.ModelPatcher):
        self.sites_patcher = sites_patcher

    def _slots(self, patcher):
        unet = patcher.model.diffusion_model
        slots = site_slots(unet)
        sites = self.sites_patcher.model.sites
        if len(slots) != len(sites):
            raise IncompatibleModelError(
                f"this MODEL has {len(slots)} X-NeMo site positions but the loaded X-NeMo layers have {len(sites)}: "
                f"connect the MODEL output of Load X-NeMo (not another checkpoint) to the sampler"
            )
        return slots, sites

    def inject(self, patcher) -> None:
        slots, sites = self._slots(patcher)
        for (block, position), site in zip(reversed(slots), reversed(list(sites))):
            block.insert(position, site)

    def eject(self, patcher) -> None:
        unet = patcher.model.diffusion_model
        ours = {id(s) for s in self.sites_patcher.model.sites}
        for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
            for i in reversed(range(len(block))):
                if id(block[i]) in ours:
                    del block[i]


def site_handler(layer: XNeMoSite, x, emb, context, transformer_options, *args, **kwargs):
    """forward_timestep_embed_patch handler: run one site with this call's motion tokens and frame count."""
    state: CallState | None = transformer_options.get(KEY)
    if state is None:
        raise IncompatibleModelError(
            "the X-NeMo MODEL was sampled without X-NeMo conditioning: connect positive and negative from "
            "X-NeMo Reference Condition"
        )
    # ComfyUI's backend (SDPA/flash/xformers/sage, as the user configured) on GPUs. On the CPU ComfyUI picks its
    # memory-saving sub-quadratic kernel, which is several times slower for the short temporal sequences (<= 32
    # frames) and 32-token motion keys of these layers than torch's own SDPA.
    attention = sdpa_attention if x.device.type == "cpu" else optimized_attention
    return layer(x, state.motion.to(x.dtype), state.frames, attention=attention)


# ---------------------------------------------------------------------------------------------------------------
# Conditioning -> transformer_options, reference read
# ---------------------------------------------------------------------------------------------------------------


def apply_model_wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
    """APPLY_MODEL wrapper: move X-NeMo's per-row conditioning out of the model kwargs into transformer_options for the
    sites and the attn1 patch. It runs outside the UNet (and outside a torch.compile'd UNet), so the host-side work
    (flags to row segments, window check, reference projections) happens here once per call."""
    motion = kwargs.pop(MOTION_COND, None)
    use_ref = kwargs.pop(REF_COND, None)
    bank = kwargs.pop(BANK_COND, None)
    frame_ids = kwargs.pop(FRAME_COND, None)
    if motion is not None:
        rows = x.shape[0]
        chunks = len(transformer_options.get("cond_or_uncond", [0])) or 1
        if motion.shape[0] != rows or rows % chunks:
            raise IncompatibleModelError(
                f"X-NeMo motion has {motion.shape[0]} rows for a batch of {rows} latent frames: the motion and the "
                f"latent must have the same frame count (use the LATENT from X-NeMo Reference Condition)"
            )
        _check_window(frame_ids, transformer_options, rows // chunks)
        flags = torch.zeros(rows, dtype=torch.bool) if use_ref is None else use_ref.reshape(rows) > 0.5
        transformer_options, replaced = core_patches.wrap_replace_patches(transformer_options)
        base = executor.class_obj
        unet = getattr(base.diffusion_model, "_orig_mod", base.diffusion_model)  # under a compile wrapper too
        state = CallState(
            motion=motion.to(x.device),
            use_reference=flags.to(x.device),
            bank=bank,
            frames=rows // chunks,
            unet=unet,
            replaced=replaced,
            weights_generation=weights_generation(unet),
        )
        prepare_reads(state, x.device, _compute_dtype(base))
        transformer_options = {**transformer_options, KEY: state}
    previous = transformer_options.get("optimized_attention_override")
    if not isinstance(previous, ReferenceAttention):
        transformer_options = {**transformer_options, "optimized_attention_override": ReferenceAttention(previous)}
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def _compute_dtype(base) -> torch.dtype:
    """The dtype the UNet computes in (BaseModel._apply_model casts its input to it), in both supported ComfyUIs."""
    if hasattr(base, "get_dtype_inference"):
        return base.get_dtype_inference()
    return base.manual_cast_dtype or base.get_dtype()


def _check_window(frame_ids, transformer_options: dict, frames: int) -> None:
    """Fail loudly when a context-window scheduler handed us per-frame motion that is not the window's frames.

    ComfyUI 0.3.x core context windows do not slice frames-as-batch `model_conds` (their check only fires for
    dim > 0), and `CONDRegular` then silently keeps the first window's motion for every window.
    """
    window = transformer_options.get("context_window")
    if frame_ids is None or window is None or not hasattr(window, "index_list"):
        return
    expected = torch.as_tensor(window.index_list, device=frame_ids.device)
    got = frame_ids.reshape(-1, frames)
    if expected.numel() != frames or not bool((got == expected).all()):
        raise IncompatibleModelError(
            "this ComfyUI's context windows do not slice X-NeMo's per-frame motion (ComfyUI 0.3.x slices "
            "frames-as-batch conditioning only in later releases): sample long clips with X-NeMo Sample Animation, "
            "or update ComfyUI"
        )


# ---------------------------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------------------------


def refuse_incompatible_patches(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper (core KSampler and Sample Animation alike): refuse, before any model call, the nodes whose
    patches cannot hold on X-NeMo (core_patches.refusals: core Context Windows, MultiGPU CFG Split, a replaced
    schedule, PerpNeg, ...)."""
    guider = executor.class_obj
    core_patches.refuse(guider.model_options, has_xnemo_schedule(guider.model_patcher), guider=guider)
    return executor(*args, **kwargs)


def has_xnemo_schedule(model: comfy.model_patcher.ModelPatcher) -> bool:
    return isinstance(model.get_model_object("model_sampling"), XNeMoModelSampling)


def release_banks_after_run(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: the reference banks' device copies and projected keys/values live for one sampling run.
    They are outside ComfyUI's memory accounting, and the weights they were projected with may be patched in place
    before the next run (a LoRA applied by ModelPatcher, hook keyframes), so they are dropped when the run ends."""
    banks = banks_in(getattr(executor.class_obj, "conds", None))
    for bank in banks:
        bank.release()  # weights may have changed since any earlier run
    try:
        return executor(*args, **kwargs)
    finally:
        for bank in banks:
            bank.release()


def apply_xnemo(
    model: comfy.model_patcher.ModelPatcher, sites_patcher: comfy.model_patcher.ModelPatcher
) -> comfy.model_patcher.ModelPatcher:
    """A clone of `model` with X-NeMo's sites, reference read and schedule attached (the input is left untouched)."""
    model = model.clone()
    model.set_additional_models(KEY, [sites_patcher])
    injection = SiteInjection(sites_patcher)
    model.set_injections(
        KEY, [comfy.patcher_extension.PatcherInjection(inject=injection.inject, eject=injection.eject)]
    )
    model.set_model_forward_timestep_embed_patch((XNeMoSite, site_handler))
    model.set_model_attn1_patch(ReferenceAttentionPatch())
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, apply_model_wrapper)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, refuse_incompatible_patches)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, release_banks_after_run)
    for moment in (comfy.patcher_extension.CallbacksMP.ON_LOAD, comfy.patcher_extension.CallbacksMP.ON_APPLY_HOOKS):
        model.add_callback_with_key(moment, KEY, note_weights_patched)
    model.add_object_patch("model_sampling", XNeMoModelSampling())
    for name, module in model.model.diffusion_model.named_modules():
        if name.endswith(".attn2") and isinstance(module, CrossAttention):
            model.add_object_patch(f"diffusion_model.{name}.forward", SingleTokenCrossAttention(module))
        elif isinstance(module, GEGLU):
            model.add_object_patch(f"diffusion_model.{name}.forward", FusedGEGLU(module))
    return model


class FusedGEGLU:
    """Object patch of each denoising-UNet GEGLU `forward`: ComfyUI's `x * gelu(gate)` computed by `layers.geglu`
    (on a float32 CPU two oneDNN products with the GELU and the multiply fused; elsewhere the product written into
    the GELU's output, bit-identical to ComfyUI's). Layers ComfyUI casts or patches per call run ComfyUI's Linear."""

    def __init__(self, module: torch.nn.Module):
        self._geglu = module  # private: the resume key reads the weights from the model itself, not from here

    def __call__(self, x):
        return geglu(self._geglu.proj, x)


class SingleTokenCrossAttention:
    """Object patch of each denoising-UNet `attn2.forward`. X-NeMo's cross-attention context is one token (the CLIP
    image embedding; zeros for the unconditional rows): a softmax over one key is exactly 1, so every query gets that
    token's value and the layer's output is `to_out(to_v(context))`, the same for all pixels of a row. It is computed
    once per row and broadcast, without `to_q` and the attention (official size: 2 of the 20 C x C products per
    pixel of every SD transformer block). Anything else (more tokens, a mask, another pack's attention override or
    attn2 output patch) runs ComfyUI's own forward."""

    def __init__(self, attn2: torch.nn.Module):
        self._attn2 = attn2  # private: the resume key reads the weights from the model itself, not from here

    def __call__(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006 - ComfyUI's
        attn2 = self._attn2
        source = context if value is None else value
        override = transformer_options.get("optimized_attention_override")
        if (
            source is None
            or source.shape[1] != 1
            or (context is not None and context.shape[1] != 1)
            or mask is not None
            or source.shape[0] not in (1, x.shape[0])
            or not (override is None or (isinstance(override, ReferenceAttention) and override.previous is None))
            or transformer_options.get("patches", {}).get("attn2_output_patch")
        ):
            return type(attn2).forward(attn2, x, context, value, mask, transformer_options=transformer_options)
        out = attn2.to_out(attn2.to_v(source))  # [rows or 1, 1, C]
        return out.expand(x.shape[0], x.shape[1], out.shape[-1])


def is_xnemo_model(model: comfy.model_patcher.ModelPatcher) -> bool:
    return bool(model.get_additional_models_with_key(KEY))


def make_patcher(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """Wrap an X-NeMo module so ComfyUI's model management loads, offloads and casts it.

    Always the estimate-based ModelPatcher, also where ComfyUI 0.30.0 turns on dynamic VRAM (comfy-aimdo, NVIDIA) and
    makes CoreModelPatcher its ModelPatcherDynamic: that one pages weights in through a CUDA virtual address range,
    has no hook support, and has never run X-NeMo's injected sites or reference read (it needs a GPU to run at all).
    The estimate-based patcher is what every test and the memory plan run, and core keeps it for models that opt out
    (`disable_dynamic`), so X-NeMo opts out until a GPU run proves the dynamic one."""
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def xnemo_conditioning(
    clip_embed: torch.Tensor, bank: ReferenceBank, motion_tokens: torch.Tensor, reference_tokens: torch.Tensor
) -> tuple[list, list]:
    """Positive and negative CONDITIONING for X-NeMo (the official CFG pair).

    positive: CLIP image embedding, driving motion per frame, attn1 reads the reference bank;
    negative: zero CLIP embedding, the reference face's own motion on every frame, plain self-attention.
    Per-frame tensors ride in `model_conds` so ComfyUI routes them to cond and uncond rows itself.
    """
    import comfy.conds

    frames = motion_tokens.shape[0]
    shared_bank = comfy.conds.CONDConstant(bank)
    frame_index = comfy.conds.CONDRegular(torch.arange(frames, dtype=torch.int64))
    positive = [
        [
            clip_embed,
            {
                "model_conds": {
                    FRAME_COND: frame_index,
                    MOTION_COND: comfy.conds.CONDRegular(motion_tokens),
                    REF_COND: comfy.conds.CONDRegular(torch.ones(frames, 1)),
                    BANK_COND: shared_bank,
                }
            },
        ]
    ]
    negative = [
        [
            torch.zeros_like(clip_embed),
            {
                "model_conds": {
                    FRAME_COND: frame_index,
                    MOTION_COND: comfy.conds.CONDRegular(reference_tokens[:1].expand(frames, -1, -1).contiguous()),
                    REF_COND: comfy.conds.CONDRegular(torch.zeros(frames, 1)),
                    BANK_COND: shared_bank,
                }
            },
        ]
    ]
    return positive, negative
