"""The reference keys/values cache against weights patched in place, with weights made as ComfyUI makes them (under
torch.inference_mode: inference tensors keep no version counter, and an in-place patch keeps id and data pointer).

What is checked, on the tiny fixture UNet with real ComfyUI sampling:
- a LoRA that ModelPatcher applies in place (weight_inplace_update) after a first run, with the same bank: the
  output equals a run with a fresh bank, and differs from the unpatched run;
- a direct in-place copy_ into the attn1 key/value weights between two runs: the same;
- hook LoRA keyframes (the weights change in place within one run): the output equals a run with the cache off;
- after every run the bank holds no device copies or projections (they live for one run only).
"""

from __future__ import annotations

import comfy.hooks
import folder_paths
import pytest
import torch
from safetensors.torch import load_file

from xnemo_pack.nodes import register_model_folder
from xnemo_pack.nodes.loader import XNeMoLoader
from xnemo_pack.xnemo_core.adapters import reference_bank, sampling, unet_patch

FRAMES = 2
SETTINGS = sampling.SampleSettings(steps=2, context_length=FRAMES)
FILES = tuple(f"xnemo_{n}.pth" for n in ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module"))


@pytest.fixture
def rig(fixture_dir):
    """A freshly loaded model (each test patches its weights), the reference bank inputs and the start latent."""
    register_model_folder()
    folder_paths.add_model_folder_path("x-nemo", str(fixture_dir))
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    with torch.inference_mode():  # as ComfyUI runs its nodes
        model, xnemo = XNeMoLoader.execute(*FILES, "fp32").args
    latent = sampling.blurred_reference(inputs["single.ref_latent"], FRAMES) / 0.18215
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def new_bank():
        with torch.inference_mode():
            return reference_bank.compute_reference_bank(
                xnemo.reference, inputs["single.ref_latent"], inputs["clip_embed"]
            )

    def conditioning(bank):
        return unet_patch.xnemo_conditioning(
            inputs["clip_embed"], bank, golden["motenc.drive.tokens"][:FRAMES], golden["motenc.ref.tokens"]
        )

    def run(patcher, bank, positive=None):
        pos, neg = conditioning(bank)
        with torch.inference_mode():
            out = sampling.sample_animation(patcher, positive or pos, neg, latent, SETTINGS, noise=noise)
        assert bank._cast == {} and bank._projected == {} and bank.cached_bytes() == 0  # released after the run
        return out

    return model, new_bank, conditioning, run


def attn1_weights(model) -> dict[str, torch.Tensor]:
    """ModelPatcher keys -> the attn1 key/value projection weights of every transformer block of the UNet."""
    return {
        k: v
        for k, v in model.model.state_dict(keep_vars=True).items()
        if k.startswith("diffusion_model.") and (".attn1.to_k." in k or ".attn1.to_v." in k)
    }


def test_lora_applied_in_place_after_a_run_is_read(rig):
    model, new_bank, _, run = rig
    bank = new_bank()
    weights = attn1_weights(model)
    assert weights and all(w.is_inference() for w in weights.values())  # no version counter to go by
    plain = run(model, bank)
    lora = model.clone()
    lora.weight_inplace_update = True  # copy_to_param: same tensor object, same storage
    gen = torch.Generator().manual_seed(1)
    lora.add_patches({k: (torch.randn(w.shape, generator=gen) * 0.5,) for k, w in weights.items()}, 1.0)
    patched = run(lora, bank)
    after = attn1_weights(model)
    assert all(after[k] is w for k, w in weights.items())  # patched in place, not replaced
    fresh = run(lora, new_bank())
    assert torch.equal(patched, fresh)
    assert (patched - plain).abs().max().item() > 1e-3  # the patch matters, so reading it is visible


def test_direct_in_place_copy_between_runs_is_read(rig):
    model, new_bank, _, run = rig
    bank = new_bank()
    plain = run(model, bank)
    with torch.inference_mode():
        for w in attn1_weights(model).values():
            w.copy_(w * 1.5 + 0.01)
    patched = run(model, bank)
    fresh = run(model, new_bank())
    assert torch.equal(patched, fresh)
    assert (patched - plain).abs().max().item() > 1e-3


def test_hook_lora_keyframes_within_a_run_are_read(rig, monkeypatch):
    """A hook LoRA on the positive rows at strength 0 for the first step and 1 after: ComfyUI re-patches the same
    weights in place mid-run (and between the positive and negative batches); the cache must follow."""
    model, new_bank, conditioning, run = rig
    weights = attn1_weights(model)
    gen = torch.Generator().manual_seed(2)
    targets = {k: w.detach().clone() + torch.randn(w.shape, generator=gen) for k, w in weights.items()}

    def hooked_positive(bank):
        hooks = comfy.hooks.create_hook_model_as_lora(targets, None, 1.0, 0.0)
        keyframes = comfy.hooks.HookKeyframeGroup()
        keyframes.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=0.0))
        keyframes.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=0.4))
        hooks.set_keyframes_on_hooks(keyframes)
        return comfy.hooks.set_hooks_for_conditioning(conditioning(bank)[0], hooks)

    projections = []
    original = reference_bank.ReferenceBank.projected

    def counted(self, *args, **kwargs):
        before = dict(self._projected)
        out = original(self, *args, **kwargs)
        projections.append(any(before.get(k) is not v for k, v in self._projected.items()))
        return out

    monkeypatch.setattr(reference_bank.ReferenceBank, "projected", counted)
    bank = new_bank()
    cached = run(model, bank, hooked_positive(bank))
    recomputed = sum(projections)

    def uncached(self, *args, **kwargs):
        self._projected.clear()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(reference_bank.ReferenceBank, "projected", uncached)
    bank = new_bank()
    oracle = run(model, bank, hooked_positive(bank))
    assert torch.equal(cached, oracle)
    blocks = len(bank.blocks)
    assert recomputed == 2 * blocks, (recomputed, blocks)  # once per step (strength 0, then 1), not per call
    plain = run(model, new_bank())
    assert (cached - plain).abs().max().item() > 1e-3  # the hook acted
