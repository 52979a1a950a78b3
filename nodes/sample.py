"""X-NeMo Sample Animation: sample the whole clip in overlapping windows on ComfyUI's samplers."""

from __future__ import annotations

import logging
import os

import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io

from ..xnemo_core.adapters import resume as resume_room
from ..xnemo_core.adapters import sampling
from ..xnemo_core.pure.constants import (
    DEFAULT_CFG,
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_CONTEXT_OVERLAP,
    DEFAULT_STEPS,
    DRAFT_CFG,
    DRAFT_STEPS,
    MAX_STEPS,
    TEMPORAL_MAX_FRAMES,
)
from ..xnemo_core.pure.windows import OFFSET_MODES, windows_per_step
from .checks import check_named
from .types import CATEGORY


class XNeMoSampleAnimation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoSampleAnimation",
            display_name="X-NeMo Sample Animation",
            category=CATEGORY,
            description="Sample an X-NeMo clip of any length: overlapping windows of context_length frames, averaged "
            "where they overlap, window offsets drawn from the seed (same seed, same clip). The default "
            "sampler/scheduler reproduce the official DDIM. Core KSampler also works for clips of one "
            "window. For longer clips use this node: core Context Windows (Manual) cannot run "
            "frames-as-batch latents on ComfyUI 0.3.75 (tested), and where a release runs them without "
            "slicing per-frame conditioning, X-NeMo stops with a message instead of using the wrong motion.",
            inputs=[
                io.Model.Input("model", tooltip="MODEL from Load X-NeMo."),
                io.Conditioning.Input("positive", tooltip="positive from X-NeMo Reference Condition."),
                io.Conditioning.Input("negative", tooltip="negative from X-NeMo Reference Condition."),
                io.Latent.Input(
                    "latent", tooltip="Start latent from X-NeMo Reference Condition (one frame per motion frame)."
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=sampling.MAX_SEED,
                    control_after_generate=True,
                    tooltip="Seed for the noise and the window offsets.",
                ),
                io.Int.Input(
                    "steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS, tooltip="Denoising steps (official 35)."
                ),
                io.Float.Input(
                    "cfg",
                    default=DEFAULT_CFG,
                    min=0.0,
                    max=sampling.MAX_CFG,
                    step=0.1,
                    round=0.01,
                    tooltip="Guidance toward reference appearance + driving motion (official 2.5). Higher "
                    "exaggerates expressions and contrast; 1 disables the negative branch.",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=list(sampling.SAMPLERS),
                    default=sampling.DEFAULT,
                    tooltip="xnemo_ddim: the official deterministic DDIM (eta 0). Any ComfyUI sampler works.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(sampling.SCHEDULERS),
                    default=sampling.DEFAULT,
                    tooltip="xnemo_ddim: the official timesteps (leading spacing, 35 steps = 953..1). Any "
                    "ComfyUI scheduler works.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="1.0 starts at the official first timestep on the blurred reference; lower keeps "
                    "more of the start latent.",
                ),
                io.Int.Input(
                    "context_length",
                    default=DEFAULT_CONTEXT_LENGTH,
                    min=1,
                    max=TEMPORAL_MAX_FRAMES,
                    tooltip=f"Frames per window (official 24; at most {TEMPORAL_MAX_FRAMES}, the temporal "
                    f"layers' limit). Memory grows with it, not with the clip length.",
                ),
                io.Int.Input(
                    "context_overlap",
                    default=DEFAULT_CONTEXT_OVERLAP,
                    min=0,
                    max=TEMPORAL_MAX_FRAMES - 1,
                    tooltip="Frames shared by neighbouring windows (official 4). More overlap: smoother seams, "
                    "more windows per step.",
                ),
                io.Boolean.Input(
                    "closed_loop",
                    default=True,
                    tooltip="Official: windows wrap around the clip end, so it loops smoothly. Turn off "
                    "for clips whose end should not be tied to the start.",
                ),
                io.Combo.Input(
                    "offset_mode",
                    options=list(OFFSET_MODES),
                    default="seeded",
                    tooltip="seeded: window boundaries move every step (hides seams), reproducibly from the "
                    "seed. none: fixed boundaries.",
                ),
                io.Combo.Input(
                    "preset",
                    options=list(sampling.PRESETS),
                    default="custom",
                    optional=True,
                    tooltip="custom: the steps and cfg above. draft: NOT the official sampling, a quick "
                    f"preview: cfg {DRAFT_CFG:g} (the negative branch is skipped, half the UNet "
                    f"work) and at most {DRAFT_STEPS} steps.",
                ),
                io.Boolean.Input(
                    "compile",
                    default=False,
                    optional=True,
                    tooltip="torch.compile the UNet for this run (inductor). The first run compiles "
                    "(minutes), later runs with the same sizes are faster; needs a working "
                    "compiler toolchain. Off: no compilation.",
                ),
                io.Boolean.Input(
                    "resume",
                    default=True,
                    optional=True,
                    tooltip="Write a checkpoint after every step (one latent of the clip, in the output "
                    f"folder's {resume_room.FOLDER}/, at most {resume_room.MAX_CHECKPOINTS} files, removed when "
                    "the render completes), so queueing the same graph after a cancel or a crash goes on "
                    "where it stopped, with the same result. Samplers with state between steps "
                    "(dpmpp_2m, ancestral, SDE, ...) always start over. Off: no files written.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Sampled frames; decode with X-NeMo VAE Decode.")],
            is_experimental=True,
        )

    @classmethod
    def validate_inputs(
        cls,
        steps: int | None = None,
        denoise: float | None = None,
        scheduler: str | None = None,
        sampler_name: str | None = None,
        offset_mode: str | None = None,
        context_length: int | None = None,
        context_overlap: int | None = None,
        preset: str | None = None,
    ) -> bool | str:
        # Named inputs only (checked together); ComfyUI's own min/max checks stay on for seed, cfg and the rest.
        checked = check_named(
            cls, scheduler=scheduler, sampler_name=sampler_name, offset_mode=offset_mode, preset=preset
        )
        if checked is not True:
            return checked
        if context_length is not None and context_overlap is not None and context_overlap >= context_length:
            return (
                f"context_overlap ({context_overlap}) must be smaller than context_length ({context_length}); "
                f"the official setting is 24 / 4"
            )
        try:
            sampling.SampleSettings(
                steps=DEFAULT_STEPS if steps is None else steps,
                denoise=1.0 if denoise is None else denoise,
                scheduler=sampling.DEFAULT if scheduler is None else scheduler,
                context_length=DEFAULT_CONTEXT_LENGTH if context_length is None else context_length,
                context_overlap=0,
            ).validate(1)
        except ValueError as e:
            return str(e)
        # what the settings check leaves to the schema (e.g. steps above the maximum with another scheduler)
        return check_named(
            cls, steps=steps, denoise=denoise, context_length=context_length, context_overlap=context_overlap
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent: dict,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float,
        context_length: int,
        context_overlap: int,
        closed_loop: bool,
        offset_mode: str,
        preset: str = "custom",
        compile: bool = False,
        resume: bool = True,
    ) -> io.NodeOutput:
        samples: torch.Tensor = latent["samples"]
        settings = sampling.apply_preset(
            sampling.SampleSettings(
                seed=seed,
                steps=steps,
                cfg=cfg,
                sampler_name=sampler_name,
                scheduler=scheduler,
                denoise=denoise,
                context_length=context_length,
                context_overlap=context_overlap,
                closed_loop=closed_loop,
                offset_mode=offset_mode,
                compile=compile,
            ),
            preset,
        )
        steps = settings.steps
        frames = samples.shape[0]
        settings.validate(frames)
        offsets = sampling.run_offsets(settings)
        per_step = windows_per_step(frames, settings.context_length, settings.context_overlap, offsets, closed_loop)
        total = sum(per_step)
        bar = comfy.utils.ProgressBar(total)
        previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        clock = resume_room.StepClock(steps, per_step)
        windows_done = [0, 0]  # [windows before the resumed step, windows run here]

        def on_resume(step: int, _steps: int):  # the bar starts at the resumed step
            clock.resumed(step)
            windows_done[0] = clock.windows_before(step)
            bar.update_absolute(windows_done[0], total)

        def on_window(done: int, _):
            windows_done[1] = done
            bar.update_absolute(min(sum(windows_done), total), total)

        def on_step(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int):
            preview = previewer.decode_latent_to_preview_image("JPEG", x0[:1]) if previewer else None
            bar.update_absolute(min(sum(windows_done), total), total, preview)
            logging.getLogger("xnemo").info(clock.line(step + 1))

        store = resume_room.CheckpointStore(os.path.join(folder_paths.get_output_directory(), resume_room.FOLDER))
        options = resume_room.ResumeOptions(store, on_resume=on_resume) if resume else None
        out = sampling.sample_animation(
            model,
            positive,
            negative,
            samples,
            settings,
            noise_mask=latent.get("noise_mask"),
            callback=on_step,
            on_window=on_window,
            resume=options,
        )
        return io.NodeOutput({"samples": out}, ui={"xnemo_frames": [frames]})


NODES = [XNeMoSampleAnimation]
