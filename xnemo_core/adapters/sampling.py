"""X-NeMo sampling on ComfyUI's samplers: the official DDIM, the blurred-reference start, sliding context windows.

The official pipeline and this one compute the same thing:
- DDIM with eta 0 is Euler in ComfyUI's sigma space (x/sqrt(alpha) = x0 + sigma*eps), so the default sampler
  "xnemo_ddim" runs ComfyUI's Euler on the official timesteps (leading spacing, offset 1: 35 steps = 953, 925, ... 1),
  ending at sigma 0 (the official final alpha of 1);
- the start latent is the reference latent repeated over frames and Gaussian-blurred (kernel 9, sigma 18), noised
  to the first timestep: sqrt(a)*blur + sqrt(1-a)*noise, which is ComfyUI's `blur + sigma*noise` in sigma space;
- long clips run in windows of `context_length` frames overlapping by `context_overlap`; the windows of one step are
  shifted by an offset (official: unseeded `random.randint(0, length-1)`; here drawn from the seed) and wrap around
  the clip (closed loop); overlapping predictions are averaged, then CFG is applied (linear, so the order does not
  matter).
Motion tokens and the reference bank arrive ready-made in the conditioning: nothing is recomputed per window or step.

How a window reaches the UNet (two ComfyUI wrappers; diagram in docs/architecture.md, "The path of one attention
call"). The latent is frames-as-batch, [F, 4, h, w], and ComfyUI never tells a wrapper which of its tensors are per
frame, so both wrappers go by shapes:
1. `WindowPlan.calc_cond_batch` (CALC_COND_BATCH) cuts x, per-frame timesteps and every processed model_cond whose
   first dimension is F (motion tokens, reference flags, frame ids; not the shared CLIP embedding `c_crossattn` nor
   the bank, a CONDConstant) to the window's frames, calls ComfyUI once per window and averages the overlaps.
2. ComfyUI then stacks the window's cond and uncond rows into one batch; the DIFFUSION_MODEL wrapper
   (`unet_patch.diffusion_model_wrapper`) reads the window length back as rows // len(cond_or_uncond), which the
   temporal layers need to know where one clip of frames ends and the next begins.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import torch
import torch.nn.functional as F

from ..pure.constants import (
    DEFAULT_CFG,
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_CONTEXT_OVERLAP,
    DEFAULT_STEPS,
    DRAFT_CFG,
    DRAFT_STEPS,
    INIT_BLUR_KERNEL,
    INIT_BLUR_SIGMA,
    NUM_TRAIN_TIMESTEPS,
    TEMPORAL_MAX_FRAMES,
)
from ..pure.errors import IncompatibleModelError, XNeMoError
from ..pure.windows import context_windows, frames_per_call, window_offsets, windows_per_step
from . import core_patches
from .resume import ResumableRun, ResumeOptions
from .unet_patch import KEY, MOTION_COND, has_xnemo_schedule, is_xnemo_model

DEFAULT = "xnemo_ddim"
SAMPLERS = (DEFAULT, *comfy.samplers.KSampler.SAMPLERS)
SCHEDULERS = (DEFAULT, *comfy.samplers.KSampler.SCHEDULERS)
MAX_FRAMES = 100_000
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # ComfyUI's seed range (64-bit)
MAX_CFG = 30.0


# ---------------------------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------------------------


def ddim_timesteps(steps: int, train_steps: int = NUM_TRAIN_TIMESTEPS, offset: int = 1) -> list[int]:
    """diffusers DDIM "leading" timesteps with steps_offset 1, highest first (35 steps: 953, 925, ..., 1)."""
    ratio = train_steps // steps
    return [i * ratio + offset for i in reversed(range(steps))]


def make_sigmas(model_sampling, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Sigmas for `steps` steps ending at 0. denoise < 1 keeps the last steps of a longer schedule (as KSampler)."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    if scheduler == DEFAULT:
        timesteps = torch.tensor(ddim_timesteps(total))
        sigmas = torch.cat([model_sampling.sigmas[timesteps].float(), torch.zeros(1)])
    else:
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu()
    return sigmas[-(steps + 1) :]


# ---------------------------------------------------------------------------------------------------------------
# Start latent
# ---------------------------------------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, kernel: int = INIT_BLUR_KERNEL, sigma: float = INIT_BLUR_SIGMA) -> torch.Tensor:
    """Per-channel Gaussian blur with reflect padding, the kernel built as torchvision's GaussianBlur builds it."""
    half = (kernel - 1) * 0.5
    t = torch.linspace(-half, half, steps=kernel, dtype=x.dtype, device=x.device)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    k1 = pdf / pdf.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, kernel, kernel)
    pad = kernel // 2
    return F.conv2d(F.pad(x, [pad, pad, pad, pad], mode="reflect"), k2, groups=x.shape[1])


def blurred_reference(ref_latent: torch.Tensor, frames: int) -> torch.Tensor:
    """The official start latent before noise: reference latent [1, C, h, w] repeated to [frames, C, h, w], blurred."""
    return gaussian_blur(ref_latent[:1].float()).expand(frames, -1, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------------------------


def _slice_conds(conds: list, index: torch.Tensor, frames: int) -> list:
    """Copies of ComfyUI's processed conds with every per-frame model_cond cut to the window's frames."""
    out = []
    for cond_list in conds:
        if cond_list is None:
            out.append(None)
            continue
        sliced = []
        for c in cond_list:
            model_conds = dict(c.get("model_conds", {}))
            for name, value in model_conds.items():
                tensor = getattr(value, "cond", None)
                if torch.is_tensor(tensor) and tensor.ndim > 0 and tensor.shape[0] == frames and name != "c_crossattn":
                    model_conds[name] = value._copy_with(tensor.index_select(0, index.to(tensor.device)))
            sliced.append({**c, "model_conds": model_conds})
        out.append(sliced)
    return out


@dataclass(kw_only=True)
class WindowPlan:
    """Per-run window settings. `calc_cond_batch` (CALC_COND_BATCH wrapper) does the windowing; `prepare_sampling`
    (PREPARE_SAMPLING wrapper) makes ComfyUI plan memory for one window's batch instead of the whole clip."""

    length: int
    overlap: int
    closed_loop: bool
    offsets: list[int]
    on_window: Callable[[int, int], None] | None = None
    windows_run: int = field(default=0, init=False)

    def windows_for(self, frames: int, step: int) -> list[list[int]]:
        offset = self.offsets[min(step, len(self.offsets) - 1)] if self.offsets else 0
        return context_windows(frames, self.length, self.overlap, offset, self.closed_loop)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        frames = x_in.shape[0]
        if frames <= self.length:
            out = executor(model, conds, x_in, timestep, model_options)
            self._tick()
            return out
        step = _step_index(timestep, model_options) if len(set(self.offsets)) > 1 else 0
        sums = [torch.zeros_like(x_in) for _ in conds]
        counts = torch.zeros((frames,) + (1,) * (x_in.ndim - 1), device=x_in.device, dtype=x_in.dtype)
        for window in self.windows_for(frames, step):
            comfy.model_management.throw_exception_if_processing_interrupted()
            index = torch.tensor(window, device=x_in.device)
            outs = executor(
                model,
                _slice_conds(conds, index, frames),
                x_in.index_select(0, index),
                timestep.index_select(0, index) if timestep.ndim and timestep.shape[0] == frames else timestep,
                model_options,
            )
            for total, part in zip(sums, outs):
                total.index_add_(0, index, part)
            counts.index_add_(0, index, torch.ones_like(counts[: len(window)]))
            self._tick()
        return [total / counts for total in sums]

    def prepare_sampling(self, executor, model, noise_shape, *args, **kwargs):
        """ComfyUI sizes its reservation (and so how much of the UNet it loads) from the noise shape it is given:
        with the whole clip that grows ~80 MiB per frame at 512 px and streams the UNet on long clips. Only one
        window ever reaches the UNet, so plan for one window, as ComfyUI's own context windows do."""
        noise_shape = [frames_per_call(noise_shape[0], self.length), *noise_shape[1:]]
        return executor(model, noise_shape, *args, **kwargs)

    def _tick(self) -> None:
        self.windows_run += 1
        if self.on_window is not None:
            self.on_window(self.windows_run, 0)


def _step_index(timestep: torch.Tensor, model_options: dict) -> int:
    """Index of the current sigma in the run's schedule (for the step's window offset). Like core context windows'
    `set_step`, a sigma that is not in the schedule is an error, never a silent nearest match."""
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return 0
    sigma = timestep.reshape(-1)[:1].to(sigmas)
    matches = torch.nonzero(torch.isclose(sigmas, sigma, rtol=1e-4)).flatten()
    if matches.numel() == 0:
        raise XNeMoError(
            f"the sampler asked for sigma {float(sigma):.6g}, which is not one of this run's {len(sigmas)} sigmas, so "
            f"the step's window offset is unknown: use a sampler that evaluates the model only at the schedule's "
            f"sigmas (euler, ddim, dpmpp_2m, ...) with more than one window, or set offset_mode to none"
        )
    return int(matches[0])


# ---------------------------------------------------------------------------------------------------------------
# The whole clip
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SampleSettings:
    seed: int = 0
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    sampler_name: str = DEFAULT
    scheduler: str = DEFAULT
    denoise: float = 1.0
    context_length: int = DEFAULT_CONTEXT_LENGTH
    context_overlap: int = DEFAULT_CONTEXT_OVERLAP
    closed_loop: bool = True
    offset_mode: str = "seeded"
    compile: bool = False  # torch.compile the UNet for this run (ComfyUI's TorchCompileModel path, inductor)

    def validate(self, frames: int, max_window: int = TEMPORAL_MAX_FRAMES) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise XNeMoError(f"seed is {self.seed}: use a whole number from 0 to {MAX_SEED}")
        if not 0.0 <= self.cfg <= MAX_CFG:  # also refuses NaN
            raise XNeMoError(
                f"cfg is {self.cfg}: use 0..{MAX_CFG:g} (the official value is 2.5; 1 turns the negative branch off)"
            )
        if self.steps < 1:
            raise XNeMoError(f"steps is {self.steps}: it must be at least 1 (the official value is {DEFAULT_STEPS})")
        if not 0.0 < self.denoise <= 1.0:
            raise XNeMoError(f"denoise is {self.denoise}: it must be in (0, 1] (1.0 starts at the official t=953)")
        total = self.steps if self.denoise >= 1.0 else int(self.steps / self.denoise)
        if self.scheduler == DEFAULT and total >= NUM_TRAIN_TIMESTEPS:
            raise XNeMoError(
                f"steps / denoise is {total}: the xnemo_ddim schedule has at most {NUM_TRAIN_TIMESTEPS - 1} steps; use "
                f"fewer steps (the official value is {DEFAULT_STEPS}), a higher denoise, or another scheduler"
            )
        if self.context_length < 1 or self.context_length > max_window:
            raise XNeMoError(
                f"context_length is {self.context_length}: the temporal layers see at most {max_window} frames at "
                f"once; use 1..{max_window} (the official value is {DEFAULT_CONTEXT_LENGTH})"
            )
        if frames > self.context_length and not 0 <= self.context_overlap < self.context_length:
            raise XNeMoError(
                f"context_overlap is {self.context_overlap} for windows of {self.context_length} frames: it must be "
                f"smaller than context_length (the official value is {DEFAULT_CONTEXT_OVERLAP})"
            )
        if frames < 1 or frames > MAX_FRAMES:
            raise XNeMoError(f"the latent has {frames} frames; X-NeMo samples 1..{MAX_FRAMES} frames per run")
        if self.sampler_name not in SAMPLERS:
            raise XNeMoError(f"unknown sampler {self.sampler_name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.scheduler not in SCHEDULERS:
            raise XNeMoError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")


def check_conditioning_frames(positive, negative, frames: int) -> None:
    """The motion in the conditioning must cover the latent frame for frame: ComfyUI would silently cut or tile it."""
    for name, conds in (("positive", positive), ("negative", negative)):
        for cond in conds or []:
            motion = getattr(cond[1].get("model_conds", {}).get(MOTION_COND), "cond", None)
            if torch.is_tensor(motion) and motion.shape[0] != frames:
                raise IncompatibleModelError(
                    f"{name} carries X-NeMo motion for {motion.shape[0]} frames but the latent has {frames} frames: "
                    f"connect the latent output of the same X-NeMo Reference Condition that made {name} (or give "
                    f"Reference Condition motion with {frames} frames)"
                )


PRESETS = ("custom", "draft")


def apply_preset(settings: SampleSettings, preset: str) -> SampleSettings:
    """ "custom": the settings as given. "draft": a NOT official preview: cfg 1 (ComfyUI then skips the unconditional
    rows, half the UNet work) and at most DRAFT_STEPS steps; motion, reference, windows and seed unchanged."""
    if preset == "custom":
        return settings
    if preset != "draft":
        raise XNeMoError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(settings, cfg=DRAFT_CFG, steps=min(settings.steps, DRAFT_STEPS))


def run_offsets(s: SampleSettings) -> list[int]:
    """The window offset of every step of a run with these settings."""
    return window_offsets(s.seed, s.steps, s.context_length, s.offset_mode)


def total_windows(frames: int, s: SampleSettings, offsets: list[int] | None = None) -> int:
    """UNet passes per CFG branch over the whole run (the progress bar's total), with the run's own offsets."""
    offsets = run_offsets(s) if offsets is None else offsets
    return sum(windows_per_step(frames, s.context_length, s.context_overlap, offsets, s.closed_loop))


def sample_animation(
    model,
    positive,
    negative,
    latent_image: torch.Tensor,
    settings: SampleSettings,
    *,
    noise: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    offsets: list[int] | None = None,
    callback: Callable | None = None,
    on_window: Callable[[int, int], None] | None = None,
    disable_pbar: bool = True,
    resume: ResumeOptions | None = None,
) -> torch.Tensor:
    """Sample a clip. latent_image: [F, 4, h, w] unscaled LATENT samples (the blurred reference from Reference
    Condition). `noise` and `offsets` override the seeded ones (parity tests feed the official run's); `noise_mask`
    is the LATENT's inpainting mask (ComfyUI's, as KSampler uses it: DifferentialDiffusion reads it). `resume`:
    checkpoint every step and go on from this render's checkpoint (adapters/resume). Returns the final latent
    [F, 4, h, w], unscaled (decode with VAE Decode)."""
    if not is_xnemo_model(model):
        raise IncompatibleModelError("Sample Animation needs the MODEL output of Load X-NeMo")
    frames = latent_image.shape[0]
    settings.validate(frames)
    check_conditioning_frames(positive, negative, frames)
    given = model
    model = model.clone()
    plan = WindowPlan(
        length=settings.context_length,
        overlap=settings.context_overlap,
        closed_loop=settings.closed_loop,
        offsets=offsets if offsets is not None else run_offsets(settings),
        on_window=on_window,
    )
    per_step = windows_per_step(
        frames, settings.context_length, settings.context_overlap, plan.offsets, plan.closed_loop
    )
    core_patches.refuse(
        model.model_options, has_xnemo_schedule(model), max(per_step, default=1), wrappers=model.wrappers
    )
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, KEY, plan.calc_cond_batch)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, KEY, plan.prepare_sampling)
    if settings.compile:
        from comfy_api.torch_helpers import set_torch_compile_wrapper

        set_torch_compile_wrapper(model, backend="inductor", keys=["diffusion_model"])
    sigmas = make_sigmas(model.get_model_object("model_sampling"), settings.scheduler, settings.steps, settings.denoise)
    sampler = comfy.samplers.sampler_object("euler" if settings.sampler_name == DEFAULT else settings.sampler_name)
    if noise is None:
        noise = comfy.sample.prepare_noise(latent_image, settings.seed)
    if resume is not None and noise_mask is not None:
        logging.info("X-NeMo: no resume checkpoints for a latent with a noise mask (the mask is not in the key)")
        resume = None
    if resume is not None:
        run = ResumableRun.start(
            resume,
            settings.sampler_name,
            given,
            positive,
            negative,
            latent_image,
            noise,
            sigmas,
            plan.offsets,
            settings,
        )
        sampler = sampler if run is None else run.wrap(sampler)
    return comfy.sample.sample_custom(
        model,
        noise,
        settings.cfg,
        sampler,
        sigmas,
        positive,
        negative,
        latent_image,
        noise_mask=noise_mask,
        callback=callback,
        disable_pbar=disable_pbar,
        seed=settings.seed,
    )
