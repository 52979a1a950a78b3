"""Load X-NeMo builds every linear layer (denoising UNet, X-NeMo sites, ReferenceNet, motion encoder) with the
oneDNN CPU path of `pure/cpu_linear` where ComfyUI would run plain fp32 layers, and leaves ComfyUI's own forward to
every layer ComfyUI changes (LoRA weight functions, weight casts), and the manual-cast and fp8/cuBLAS choices alone."""

from __future__ import annotations

import comfy.ops
import pytest
import torch
import torch.nn.functional as F

from xnemo_pack.xnemo_core.adapters import model as model_room
from xnemo_pack.xnemo_core.adapters import unet_patch
from xnemo_pack.xnemo_core.pure import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.enabled(), reason="this torch build has no oneDNN linear op")

FAST = model_room.with_cpu_linear(comfy.ops.disable_weight_init)


def linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = cpu_linear.linear

    def counting(x, weight, bias):
        out = real(x, weight, bias)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(cpu_linear, "linear", counting)
    return calls


def test_every_fp32_linear_layer_takes_the_onednn_path(loaded):
    model, xnemo = loaded
    (sites,) = model.get_additional_models_with_key(unet_patch.KEY)
    for name, module in (
        ("denoising UNet", model.model.diffusion_model),
        ("sites", sites.model),
        ("ReferenceNet", xnemo.reference.model),
        ("motion encoder", xnemo.motion.model),
    ):
        layers = linears(module)
        assert layers, name
        assert all(isinstance(m, FAST.Linear) for m in layers), name


def test_a_layer_on_the_fast_path_equals_comfyuis(loaded, spy):
    layer = linears(loaded[0].model.diffusion_model)[5]
    x = torch.randn(2, 7, layer.in_features, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = layer(x)
        ref = F.linear(x, layer.weight, layer.bias)
    assert spy == [True]
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_layers_comfyui_patches_keep_comfyuis_forward(loaded, spy):
    """A weight function (how ComfyUI applies LoRA hooks and low-VRAM patches) or a weight cast: ComfyUI's forward."""
    layer = linears(loaded[0].model.diffusion_model)[5]
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(4))
    layer.weight_function = [lambda w: w * 2]
    try:
        with torch.inference_mode():
            out = layer(x)
            ref = F.linear(x, layer.weight * 2, layer.bias)
    finally:
        del layer.weight_function  # back to the class attribute
    assert spy == []
    assert torch.equal(out, ref)
    layer.comfy_cast_weights = True
    try:
        with torch.inference_mode():
            layer(x)
    finally:
        del layer.comfy_cast_weights
    assert spy == []


def test_comfyuis_other_choices_are_kept():
    assert model_room.Precision(weight=torch.float16, manual_cast=torch.float32).operations() is comfy.ops.manual_cast
    assert model_room.Precision(weight=torch.float32, manual_cast=None).operations() is FAST
