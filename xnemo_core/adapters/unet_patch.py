"""X-NeMo on ComfyUI's own UNet, through ModelPatcher extension points only.

What gets attached to a clone of the denoising MODEL, all under the key "xnemo":
- the 21 `XNeMoSite` modules (motion cross-attention + temporal attention), in their own ModelPatcher registered as
  an additional model (ComfyUI loads/offloads/casts them with the UNet) and placed into the UNet's block lists by a
  PatcherInjection only while the model is patched;
- a `forward_timestep_embed_patch` so the sites receive `transformer_options` (per-row motion tokens, frame count);
- a DIFFUSION_MODEL wrapper that moves X-NeMo's conditioning (`xnemo_motion`, `xnemo_ref`, `xnemo_bank`, carried in
  CONDITIONING `model_conds`) from the model kwargs into `transformer_options["xnemo"]` (a `CallState`). The batch
  it gets is len(cond_or_uncond) chunks of one window's frames (sampling.py cut them), so frames per chunk =
  rows // chunks: the length the temporal layers attend over (under core context windows, checked against the
  frame ids the rows carry);
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
from comfy.ldm.modules.attention import optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, SpatialTransformer

from ..pure.constants import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, PATCH_KEY
from ..pure.errors import IncompatibleModelError
from ..pure.layers import XNeMoSite, sdpa_attention
from .reference_bank import ReferenceAttention, ReferenceAttentionPatch, ReferenceBank

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
    replace_patched: bool = False  # an attn1 replace patch is active: read the bank the concatenating way
    pending: object = None  # reference_bank.ReferenceRead handed from the attn1 patch to attention
    segments: list = field(default_factory=list)  # (start, stop, reads reference) runs of rows

    def __post_init__(self):
        flags = self.use_reference.tolist()
        self.segments = []
        for i, reads in enumerate(flags):
            if self.segments and self.segments[-1][2] == reads:
                self.segments[-1][1] = i + 1
            else:
                self.segments.append([i, i + 1, reads])
        self.reads_reference = any(flags)


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


def diffusion_model_wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """Move X-NeMo's per-row conditioning into transformer_options for the sites and the attn1 patch."""
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
        flags = torch.zeros(rows, dtype=torch.bool, device=x.device) if use_ref is None else use_ref.reshape(rows) > 0.5
        replaced = bool(transformer_options.get("patches_replace", {}).get("attn1"))
        state = CallState(
            motion=motion,
            use_reference=flags,
            bank=bank,
            frames=rows // chunks,
            unet=getattr(executor, "class_obj", None),
            replace_patched=replaced,
        )
        transformer_options = {**transformer_options, KEY: state}
    previous = transformer_options.get("optimized_attention_override")
    if not isinstance(previous, ReferenceAttention):
        transformer_options = {**transformer_options, "optimized_attention_override": ReferenceAttention(previous)}
    return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


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


def refuse_core_context_windows(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: core Context Windows nodes cannot window X-NeMo's frames-as-batch latents (their step
    lookup fails on per-frame timesteps before any model call), so say what to use instead; MultiGPU CFG Split is
    refused until a multi-GPU run proves it."""
    options = executor.class_obj.model_options
    if options.get("context_handler") is not None:
        raise IncompatibleModelError(
            "core Context Windows cannot run an X-NeMo model: remove the Context Windows node and sample with X-NeMo "
            "Sample Animation, which runs the official overlapping windows itself (context_length, context_overlap)"
        )
    patcher = getattr(executor.class_obj, "model_patcher", None)
    extra_devices = patcher.get_additional_models_with_key("multigpu") if patcher is not None else []
    if extra_devices or len(options.get("multigpu_clones") or {}) > 1:
        # ComfyUI >= 0.4's MultiGPU CFG Split deep-clones the model per device and splits the cond/uncond rows. The
        # X-NeMo bank and sites ride on the main model's additional models and transformer_options; no multi-GPU run
        # has shown that every clone gets them with its rows, so it is refused rather than trusted.
        raise IncompatibleModelError(
            "MultiGPU CFG Split is not supported with X-NeMo yet (no multi-GPU run has proven that each device gets "
            "the reference bank and motion with its rows): remove the MultiGPU CFG Split node; X-NeMo Sample "
            "Animation runs on one device"
        )
    return executor(*args, **kwargs)


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
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, diffusion_model_wrapper)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, refuse_core_context_windows)
    model.add_object_patch("model_sampling", XNeMoModelSampling())
    return model


def is_xnemo_model(model: comfy.model_patcher.ModelPatcher) -> bool:
    return bool(model.get_additional_models_with_key(KEY))


def make_patcher(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """Wrap an X-NeMo module so ComfyUI's model management loads, offloads and casts it."""
    patcher_cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_cls(
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
