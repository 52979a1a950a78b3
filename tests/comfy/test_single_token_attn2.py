"""The attn2 object patch: with X-NeMo's one-token context the cross-attention is `to_out(to_v(context))` for every
pixel, computed once per row (no `to_q`, no attention), equal to ComfyUI's forward; anything else is ComfyUI's."""

from __future__ import annotations

import comfy.ops
import pytest
import torch
from comfy.ldm.modules.attention import CrossAttention

from xnemo_pack.xnemo_core.adapters import unet_patch
from xnemo_pack.xnemo_core.adapters.reference_bank import ReferenceAttention


@pytest.fixture
def attn2():
    torch.manual_seed(0)
    m = CrossAttention(64, context_dim=32, heads=4, dim_head=16, operations=comfy.ops.disable_weight_init)
    for p in m.parameters():
        p.data = torch.randn_like(p) / 8
    return m


@pytest.fixture
def queries(attn2, monkeypatch):
    calls = []
    real = attn2.to_q.forward
    monkeypatch.setattr(attn2.to_q, "forward", lambda x: calls.append(1) or real(x))
    return calls


def run(patch, x, context, **kw):
    with torch.inference_mode():
        return patch(x, context=context, **kw)


def test_one_token_is_computed_once_per_row(attn2, queries):
    x, context = torch.randn(3, 20, 64), torch.randn(3, 1, 32)
    context[2] = 0  # an unconditional row: zeros, so the output is to_out's bias
    patch = unet_patch.SingleTokenCrossAttention(attn2)
    out = run(patch, x, context, transformer_options={"optimized_attention_override": ReferenceAttention()})
    assert queries == []
    with torch.inference_mode():
        ref = attn2.forward(x, context=context)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5
    assert torch.allclose(out[2], attn2.to_out[0].bias.expand(20, 64))


@pytest.mark.parametrize(
    "case",
    ["two tokens", "mask", "another override", "attn2 output patch"],
)
def test_anything_else_runs_comfyuis_forward(attn2, queries, case):
    x = torch.randn(2, 20, 64)
    context = torch.randn(2, 2 if case == "two tokens" else 1, 32)
    kw = {"transformer_options": {}}
    if case == "mask":
        kw["mask"] = torch.zeros(2, 20, context.shape[1])
    if case == "another override":
        kw["transformer_options"] = {"optimized_attention_override": ReferenceAttention(lambda f, *a, **k: f(*a, **k))}
    if case == "attn2 output patch":
        kw["transformer_options"] = {"patches": {"attn2_output_patch": [lambda n, extra: n]}}
    out = run(unet_patch.SingleTokenCrossAttention(attn2), x, context, **kw)
    assert queries == [1]
    with torch.inference_mode():
        assert torch.equal(out, attn2.forward(x, context=context, **kw))


def test_load_xnemo_patches_every_attn2_of_the_denoising_unet(loaded):
    model = loaded[0]
    attn2 = [n for n, m in model.model.diffusion_model.named_modules() if n.endswith(".attn2")]
    patched = [k for k, v in model.object_patches.items() if isinstance(v, unet_patch.SingleTokenCrossAttention)]
    assert attn2 and sorted(patched) == sorted(f"diffusion_model.{n}.forward" for n in attn2)


def test_geglu_patch_equals_comfyuis_and_covers_every_geglu(loaded, monkeypatch):
    from comfy.ldm.modules.attention import GEGLU

    from xnemo_pack.xnemo_core.pure import cpu_linear

    model = loaded[0]
    names = [n for n, m in model.model.diffusion_model.named_modules() if isinstance(m, GEGLU)]
    patches = {k: v for k, v in model.object_patches.items() if isinstance(v, unet_patch.FusedGEGLU)}
    assert names and sorted(patches) == sorted(f"diffusion_model.{n}.forward" for n in names)
    geglu, patch = model.model.diffusion_model.get_submodule(names[0]), patches[f"diffusion_model.{names[0]}.forward"]
    x = torch.randn(2, 9, geglu.proj.in_features, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = GEGLU.forward(geglu, x)
        fused = patch(x)  # float32 CPU: oneDNN with the GELU and the multiply fused (its own erf: float32 rounding)
        assert ((fused - ref).abs().max() / ref.abs().max()).item() < 1e-5
        monkeypatch.setattr(cpu_linear, "_OP", None)  # elsewhere: the product into the GELU output, bit for bit
        assert torch.equal(patch(x), ref)
