"""Sample Animation's `compile` option, compiled for real on the CPU with the tiny fixture UNet (2 frames, 16x16
latent, the 21 X-NeMo sites and the reference read in every transformer block).

What is checked:
- dynamo traces the whole patched UNet call (ComfyUI's UNet, the sites, the attn1 patch and the attention override)
  as one graph, with no graph break anywhere (torch._dynamo's graph_break counter stays at 0), and the traced run
  equals the eager run exactly;
- the `compile` option itself (inductor, as Sample Animation sets it) runs and matches eager within float32 noise,
  again without graph breaks. Inductor compiles ~6,000 graph nodes, minutes on 2 cores: marked slow.
"""

from __future__ import annotations

import folder_paths
import pytest
import torch
from comfy_api.torch_helpers import set_torch_compile_wrapper
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from xnemo_pack.nodes import register_model_folder
from xnemo_pack.nodes.loader import XNeMoLoader
from xnemo_pack.xnemo_core.adapters import reference_bank, sampling, unet_patch

FRAMES = 2
FILES = tuple(f"xnemo_{n}.pth" for n in ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module"))


@pytest.fixture(scope="module")
def rig(fixture_dir):
    register_model_folder()
    folder_paths.add_model_folder_path("x-nemo", str(fixture_dir))
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    with torch.inference_mode():  # as ComfyUI runs its nodes
        model, xnemo = XNeMoLoader.execute(*FILES, "fp32").args
        bank = reference_bank.compute_reference_bank(xnemo.reference, inputs["single.ref_latent"], inputs["clip_embed"])
    positive, negative = unet_patch.xnemo_conditioning(
        inputs["clip_embed"], bank, golden["motenc.drive.tokens"][:FRAMES], golden["motenc.ref.tokens"]
    )
    latent = sampling.blurred_reference(inputs["single.ref_latent"], FRAMES) / 0.18215
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def run(patcher, compile_=False):
        settings = sampling.SampleSettings(steps=1, context_length=FRAMES, compile=compile_)
        with torch.inference_mode():
            return sampling.sample_animation(patcher, positive, negative, latent, settings, noise=noise)

    return model, run


def test_patched_unet_is_one_graph_without_breaks(rig):
    model, run = rig
    eager = run(model)
    graphs = []

    def backend(gm, example_inputs):  # dynamo's capture only: what it traced, run as traced
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    counters.clear()
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend=backend, keys=["diffusion_model"])
    traced = run(compiled)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert len(graphs) == 1 and graphs[0] > 1000, graphs  # the whole UNet call (cond + uncond rows), once
    assert torch.equal(traced, eager)


@pytest.mark.slow
def test_compile_option_matches_eager(rig):
    model, run = rig
    eager = run(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = run(model, compile_=True)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # inductor fuses and reorders float32 reductions (GroupNorm, softmax, matmul tiles): rounding-level differences
    # only; the latent is ~20 in magnitude, one step of a 3M-parameter UNet
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-4), (compiled - eager).abs().max().item()
