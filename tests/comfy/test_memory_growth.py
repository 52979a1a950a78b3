"""Repeated runs keep no tensors alive: every per-run tensor (motion tokens, reference bank, conditioning, latents)
is freed once its outputs are dropped, as ComfyUI needs when it re-runs a graph with new inputs.

Counted directly: the bytes of every live torch tensor storage after `gc.collect()`. Sensitive to a leak of a single
per-run tensor, where a server RSS reading drowns anything below tens of MB in allocator noise.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from safetensors.torch import load_file

from xnemo_pack.xnemo_core.adapters import reference_bank, sampling, unet_patch
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES, LATENT_SCALE

FRAMES = 10
LEAK_BOUND = 8 * 1024  # bytes; a run makes ~150 KB of tensors at this size, the start latent alone 20 KB


@pytest.fixture(scope="module")
def loaded(fixture_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")


def live_tensor_bytes() -> int:
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance() on some torch module proxies warns about deprecated names
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        try:
            if obj.device.type != "meta":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, ReferenceError):
            continue
    return sum(storages.values())


def one_run(loaded, fixture_dir, seed: int):
    """Bank, conditioning and a two-window clip: what Reference Condition + Sample Animation make per run."""
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    model, xnemo = loaded
    bank = reference_bank.compute_reference_bank(xnemo.reference, inputs["multi.ref_latent"], inputs["clip_embed"])
    positive, negative = unet_patch.xnemo_conditioning(
        inputs["clip_embed"], bank, golden["motenc.drive.tokens"][:FRAMES], golden["motenc.ref.tokens"]
    )
    start = sampling.blurred_reference(inputs["multi.ref_latent"], FRAMES) / LATENT_SCALE
    settings = sampling.SampleSettings(seed=seed, steps=1, context_length=8, context_overlap=2)
    latent = sampling.sample_animation(model, positive, negative, start, settings)
    return {
        "bank": bank,
        "positive": positive,
        "negative": negative,
        "latent": latent,
        "inputs": inputs,
        "golden": golden,
    }


def run_bytes(outputs) -> int:
    tensors = [outputs["latent"], *outputs["bank"].blocks.values()]
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_repeated_runs_leave_no_tensor_behind(loaded, fixture_dir):
    one_run(loaded, fixture_dir, seed=0)  # warm-up: caches that live for the session (schedules, model loads)
    before = live_tensor_bytes()
    for seed in (1, 2, 3):
        outputs = one_run(loaded, fixture_dir, seed)
        assert run_bytes(outputs) > 10 * LEAK_BOUND, "a run must make tensors large enough to see a leak"
        del outputs
    growth = live_tensor_bytes() - before
    assert growth < LEAK_BOUND, f"{growth} bytes of tensors stayed alive after three runs"


def test_the_count_sees_a_leaked_run(loaded, fixture_dir):
    """The measure itself: keeping one run's outputs shows up as at least their size."""
    one_run(loaded, fixture_dir, seed=0)
    before = live_tensor_bytes()
    kept = one_run(loaded, fixture_dir, seed=1)
    assert live_tensor_bytes() - before >= run_bytes(kept)
