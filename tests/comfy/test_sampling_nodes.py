"""X-NeMo Load / Sample Animation nodes in-process on the real `comfy` package, with the tiny fixture checkpoints.

What is checked: the loader goes through `folder_paths`; sampling never mutates the MODEL it was given; a seed gives
bit-identical clips; core KSampler gives the same clip as Sample Animation for a one-window clip; core context
windows on this ComfyUI (0.3.75) are refused with a message instead of silently using the wrong motion; the progress
bar counts windows; Cancel stops within one window and the next run works.
"""

from __future__ import annotations

import copy
import inspect

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import pytest
import torch
from safetensors.torch import load_file

import nodes as comfy_nodes
from xnemo_pack.nodes import register_model_folder
from xnemo_pack.nodes.loader import XNeMoLoader
from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.xnemo_core.adapters import reference_bank as reference
from xnemo_pack.xnemo_core.adapters import sampling, unet_patch
from xnemo_pack.xnemo_core.adapters.sampling import blurred_reference
from xnemo_pack.xnemo_core.pure import windows
from xnemo_pack.xnemo_core.pure.errors import IncompatibleModelError, XNeMoError

STEPS = 2
FRAMES, LENGTH, OVERLAP = 10, 8, 2  # two windows per step, small enough for CPU CI


@pytest.fixture(scope="module")
def clip_inputs(loaded, fixture_dir):
    """Conditioning for `frames` frames from the fixture's inputs (no face pipeline: that has its own tests)."""
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    bank = reference.compute_reference_bank(loaded[1].reference, inputs["multi.ref_latent"], inputs["clip_embed"])

    def make(frames: int):
        positive, negative = unet_patch.xnemo_conditioning(
            inputs["clip_embed"], bank, golden["motenc.drive.tokens"][:frames], golden["motenc.ref.tokens"]
        )
        latent = {"samples": blurred_reference(inputs["multi.ref_latent"], frames) / 0.18215}
        return positive, negative, latent

    return make


def sample(model, positive, negative, latent, seed=1, sampler="xnemo_ddim", scheduler="xnemo_ddim"):
    out = XNeMoSampleAnimation.execute(
        model, positive, negative, latent, seed, STEPS, 2.5, sampler, scheduler, 1.0, LENGTH, OVERLAP, True, "seeded"
    )
    return out.args[0]["samples"]


def test_loader_outputs_xnemo_model(loaded):
    model, xnemo = loaded
    assert unet_patch.is_xnemo_model(model)
    assert len(model.get_additional_models_with_key("xnemo")[0].model.sites) == 21
    assert xnemo.latent_channels == 4


def test_sampling_leaves_the_model_untouched_and_is_deterministic(loaded, clip_inputs):
    model = loaded[0]
    before = (copy.copy(model.model_options["transformer_options"]), dict(model.wrappers), dict(model.object_patches))
    positive, negative, latent = clip_inputs(FRAMES)
    first = sample(model, positive, negative, latent, seed=7)
    second = sample(model, positive, negative, latent, seed=7)
    other = sample(model, positive, negative, latent, seed=8)
    after = (model.model_options["transformer_options"], dict(model.wrappers), dict(model.object_patches))
    assert before == after, "Sample Animation must work on a clone"
    assert torch.equal(first, second), "same seed, same clip, bit for bit"
    assert not torch.equal(first, other)
    # The UNet's block lists are back to ComfyUI's own after sampling (injection ejected).
    unet = model.model.diffusion_model
    assert not any(
        isinstance(m, unet_patch.XNeMoSite)
        for b in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
        for m in b
    )


def test_core_ksampler_matches_for_one_window(loaded, clip_inputs):
    positive, negative, latent = clip_inputs(LENGTH)  # one window
    ours = sample(loaded[0], positive, negative, latent, seed=3, sampler="euler", scheduler="normal")
    core = comfy_nodes.common_ksampler(loaded[0], 3, STEPS, 2.5, "euler", "normal", positive, negative, latent)[0]
    assert torch.allclose(ours, core["samples"], atol=1e-6, rtol=0)


def test_core_context_windows_get_a_message_that_names_the_fix(loaded, clip_inputs):
    """Core context windows cannot run frames-as-batch latents (their step lookup fails on the per-frame timesteps);
    the pack refuses them before sampling with a message that names Sample Animation. The node's signature differs
    between 0.3.75 and 0.30.0 (`freenoise`), so it is called by keyword."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    positive, negative, latent = clip_inputs(FRAMES)
    settings = dict(
        context_length=LENGTH,
        context_overlap=OVERLAP,
        context_schedule="standard_uniform",
        context_stride=1,
        closed_loop=False,
        fuse_method="pyramid",
        dim=0,
    )
    if "freenoise" in inspect.signature(ContextWindowsManualNode.execute).parameters:  # ComfyUI >= 0.4 adds it
        settings["freenoise"] = False
    windowed = ContextWindowsManualNode.execute(loaded[0], **settings).args[0]
    with pytest.raises(IncompatibleModelError, match="remove the Context Windows node.*Sample Animation"):
        comfy_nodes.common_ksampler(windowed, 3, 1, 2.5, "euler", "normal", positive, negative, latent)
    with pytest.raises(IncompatibleModelError, match="core Context Windows cannot run an X-NeMo model"):
        sample(windowed, positive, negative, latent)


def test_multigpu_cfg_split_is_refused_with_a_message(loaded, clip_inputs):
    """MultiGPU CFG Split (ComfyUI >= 0.4) adds per-device deep clones under the additional-models key "multigpu";
    with an X-NeMo model that is refused before sampling until a multi-GPU run proves it (a stand-in clone here, as
    this machine has one device). With one device the node adds no clone and sampling is the same as without it."""
    positive, negative, latent = clip_inputs(LENGTH)
    split = loaded[0].clone()
    split.set_additional_models("multigpu", [loaded[0].clone()])
    with pytest.raises(IncompatibleModelError, match="MultiGPU CFG Split is not supported with X-NeMo"):
        sample(split, positive, negative, latent)
    try:
        from comfy_extras.nodes_multigpu import MultiGPUCFGSplitNode
    except ImportError:
        return  # ComfyUI 0.3.75 has no MultiGPU nodes
    one_device = MultiGPUCFGSplitNode.execute(loaded[0], 2).args[0]
    assert not one_device.get_additional_models_with_key("multigpu")
    assert torch.equal(sample(one_device, positive, negative, latent), sample(loaded[0], positive, negative, latent))


@pytest.mark.parametrize("closed_loop", [True, False], ids=["closed", "open"])
def test_core_index_list_windows_with_the_pack_schedule_are_bit_identical(loaded, clip_inputs, closed_loop):
    """Could Sample Animation's windows ride on core's IndexListContextHandler (ComfyUI 0.30.0)? With the official
    seeded offsets as a custom schedule, flat fusing, frames as dim 0 and no causal anchor frame, core's handler
    (per-window memory plan, per-frame cond and timestep slicing) gives the pack's result bit for bit. The pack keeps
    its own windowing while the 0.3.75 floor, whose handler cannot run frames-as-batch latents, is supported (see
    README, Long clips); this test is the proof for moving over once the floor does."""
    cw = pytest.importorskip("comfy.context_windows")
    if "causal_window_fix" not in inspect.signature(cw.IndexListContextHandler).parameters:
        pytest.skip("this core's IndexListContextHandler cannot run frames-as-batch latents (ComfyUI 0.3.75)")
    positive, negative, latent = clip_inputs(FRAMES)
    settings = sampling.SampleSettings(
        seed=4, steps=STEPS, context_length=LENGTH, context_overlap=OVERLAP, closed_loop=closed_loop
    )
    ours = sampling.sample_animation(loaded[0], positive, negative, latent["samples"], settings)

    offsets = sampling.run_offsets(settings)
    assert len(set(offsets)) > 1, "the test needs steps with different window offsets"
    schedule = cw.ContextSchedule(
        "xnemo_seeded",
        lambda frames, handler, model_options: windows.context_windows(
            frames, LENGTH, OVERLAP, offsets[handler._step], closed_loop
        ),
    )
    model = loaded[0].clone()
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, unet_patch.KEY)  # the refusal
    model.model_options["context_handler"] = cw.IndexListContextHandler(
        schedule,
        cw.get_matching_fuse_method("flat"),
        context_length=LENGTH,
        context_overlap=OVERLAP,
        closed_loop=closed_loop,
        dim=0,
        causal_window_fix=False,
    )
    cw.create_prepare_sampling_wrapper(model)
    sigmas = sampling.make_sigmas(model.get_model_object("model_sampling"), settings.scheduler, STEPS, 1.0)
    noise = comfy.sample.prepare_noise(latent["samples"], settings.seed)
    core = comfy.sample.sample_custom(
        model,
        noise,
        settings.cfg,
        comfy.samplers.sampler_object("euler"),
        sigmas,
        positive,
        negative,
        latent["samples"],
        seed=settings.seed,
    )
    assert torch.equal(core, ours), float((core - ours).abs().max())


class _Window:
    def __init__(self, index_list):
        self.index_list = index_list


def test_mis_sliced_window_motion_is_refused():
    """Releases whose core windows run but keep per-frame model_conds unsliced (0.3.x) would hand every window the
    first frames' motion; the frame-index cond catches it, and correctly sliced windows pass."""
    options = {"context_window": _Window(list(range(2, 10)))}
    unet_patch._check_window(torch.arange(2, 10).repeat(2), options, 8)  # sliced right: cond and uncond chunks
    with pytest.raises(IncompatibleModelError, match="do not slice X-NeMo's per-frame motion"):
        unet_patch._check_window(torch.arange(0, 8).repeat(2), options, 8)


def test_progress_counts_windows_and_cancel_stops_within_a_window(loaded, clip_inputs):
    positive, negative, latent = clip_inputs(FRAMES)  # windows of LENGTH overlapping OVERLAP: 2 windows per step
    calls = []

    def count_calls(executor, *args, **kwargs):  # every UNet call that starts
        calls.append(len(calls))
        return executor(*args, **kwargs)

    model = loaded[0].clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_count", count_calls)
    seen = []
    hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        sample(model, positive, negative, latent)
        assert seen[-1] == (STEPS * 2, STEPS * 2)
        assert [v for v, _ in seen] == sorted(v for v, _ in seen)
        calls_per_window = len(calls) // (STEPS * 2)

        # Cancel after the first window: the hook only raises the flag (as the UI's Cancel does); the pack's own check
        # between windows must stop the run before the next window's UNet call starts.
        seen.clear()
        calls.clear()

        def cancel_after_first(value, total, preview, node_id=None):
            seen.append((value, total))
            comfy.model_management.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(model, positive, negative, latent)
        assert len(seen) == 1, "no window may finish after Cancel"
        assert len(calls) == calls_per_window, "the next window's UNet call must not start after Cancel"
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(hook)


def test_open_loop_progress_total_counts_the_run_offsets(loaded, clip_inputs):
    """Open-loop windows per step depend on each step's offset; the progress total must equal the windows run."""
    frames, length, overlap = 13, 6, 1
    positive, negative, latent = clip_inputs(frames)
    settings = sampling.SampleSettings(
        seed=5, steps=4, context_length=length, context_overlap=overlap, closed_loop=False
    )
    per_step = windows.windows_per_step(frames, length, overlap, sampling.run_offsets(settings), False)
    assert len(set(per_step)) > 1, "pick settings whose steps differ in window count"
    seen = []
    hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        XNeMoSampleAnimation.execute(
            loaded[0],
            positive,
            negative,
            latent,
            5,
            4,
            2.5,
            "xnemo_ddim",
            "xnemo_ddim",
            1.0,
            length,
            overlap,
            False,
            "seeded",
        )
    finally:
        comfy.utils.set_progress_bar_global_hook(hook)
    assert seen[-1] == (sum(per_step), sum(per_step))


def test_a_sigma_outside_the_schedule_raises():
    options = {"transformer_options": {"sample_sigmas": torch.tensor([14.6, 7.0, 2.0, 0.0])}}
    assert sampling._step_index(torch.tensor([7.0] * 4), options) == 1
    with pytest.raises(XNeMoError, match="not one of this run's 4 sigmas"):
        sampling._step_index(torch.tensor([5.0]), options)


def test_xnemo_models_opt_out_of_dynamic_vram(monkeypatch, fixture_dir):
    """ComfyUI 0.30.0 with comfy-aimdo on an NVIDIA card rebinds CoreModelPatcher to ModelPatcherDynamic; X-NeMo's
    patchers (UNet, sites, ReferenceNet, motion encoder) stay the estimate-based ModelPatcher (a stand-in subclass
    plays the dynamic one here: the real one needs a GPU)."""
    import comfy.model_patcher

    class DynamicStandIn(comfy.model_patcher.ModelPatcher):
        pass

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicStandIn, raising=False)
    register_model_folder()
    folder_paths.add_model_folder_path("x-nemo", str(fixture_dir))
    model, bundle = XNeMoLoader.execute(
        *(f"xnemo_{n}.pth" for n in ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")), "fp32"
    ).args
    patchers = [model, *model.get_additional_models_with_key(unet_patch.KEY), bundle.reference, bundle.motion]
    assert [type(p) for p in patchers] == [comfy.model_patcher.ModelPatcher] * 4
