"""Sample Animation's speed options: the non-official "draft" preset and the optional torch.compile.

What is checked: draft means cfg 1 and at most 12 steps and nothing else; with it ComfyUI runs only the conditional
rows (half the UNet rows of the official CFG batch); custom leaves the settings alone; an unknown preset is refused
with the choices; compile=True attaches ComfyUI's torch.compile wrapper to the run's model clone only, and is off by
default.
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import folder_paths
import pytest
import torch
from safetensors.torch import load_file

from xnemo_pack.nodes import register_model_folder
from xnemo_pack.nodes.loader import XNeMoLoader
from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.xnemo_core.adapters import reference_bank, sampling, unet_patch
from xnemo_pack.xnemo_core.pure.constants import DRAFT_CFG, DRAFT_STEPS
from xnemo_pack.xnemo_core.pure.errors import XNeMoError

FRAMES = 4


@pytest.fixture(scope="module")
def run_inputs(fixture_dir):
    register_model_folder()
    folder_paths.add_model_folder_path("x-nemo", str(fixture_dir))
    model, xnemo = XNeMoLoader.execute(
        *(f"xnemo_{n}.pth" for n in ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")), "fp32"
    ).args
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    bank = reference_bank.compute_reference_bank(xnemo.reference, inputs["single.ref_latent"], inputs["clip_embed"])
    positive, negative = unet_patch.xnemo_conditioning(
        inputs["clip_embed"], bank, golden["motenc.drive.tokens"][:FRAMES], golden["motenc.ref.tokens"]
    )
    latent = {"samples": sampling.blurred_reference(inputs["single.ref_latent"], FRAMES) / 0.18215}
    return model, positive, negative, latent


def test_draft_is_cfg_1_and_fewer_steps_only():
    base = sampling.SampleSettings(seed=3, steps=35, cfg=2.5, context_length=16, context_overlap=2)
    draft = sampling.apply_preset(base, "draft")
    assert (draft.cfg, draft.steps) == (DRAFT_CFG, DRAFT_STEPS)
    assert draft.__class__(**{**vars(draft), "cfg": base.cfg, "steps": base.steps}) == base
    assert sampling.apply_preset(sampling.SampleSettings(steps=5), "draft").steps == 5  # never more steps
    assert sampling.apply_preset(base, "custom") is base
    with pytest.raises(XNeMoError, match="custom, draft"):
        sampling.apply_preset(base, "fast")


def rows_per_call(model, positive, negative, latent, preset):
    rows = []
    probe = model.clone()

    def count(executor, x, *args, **kwargs):
        rows.append(x.shape[0])
        return executor(x, *args, **kwargs)

    probe.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_rows", count)
    out = XNeMoSampleAnimation.execute(
        probe,
        positive,
        negative,
        latent,
        0,
        2,
        2.5,
        sampling.DEFAULT,
        sampling.DEFAULT,
        1.0,
        24,
        4,
        True,
        "seeded",
        preset=preset,
    )
    assert torch.isfinite(out.args[0]["samples"]).all()
    return rows


def test_draft_runs_only_the_conditional_rows(run_inputs):
    model, positive, negative, latent = run_inputs
    assert rows_per_call(model, positive, negative, latent, "custom") == [2 * FRAMES] * 2
    assert rows_per_call(model, positive, negative, latent, "draft") == [FRAMES] * 2


def test_compile_option_wraps_only_the_run_clone(run_inputs, monkeypatch):
    model, positive, negative, latent = run_inputs
    seen = []

    def fake_sample_custom(run_model, noise, *args, **kwargs):
        seen.append(run_model)
        return noise

    monkeypatch.setattr(comfy.sample, "sample_custom", fake_sample_custom)
    key = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    for compile_ in (False, True):
        sampling.sample_animation(
            model, positive, negative, latent["samples"], sampling.SampleSettings(steps=1, compile=compile_)
        )
    off, on = (m.wrappers.get(key, {}) for m in seen)
    assert "torch.compile" not in off and "torch.compile" in on
    assert "torch.compile" not in model.wrappers.get(key, {})
