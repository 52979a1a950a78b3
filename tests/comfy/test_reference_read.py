"""The reference read (attn1 patch + attention override) on one ComfyUI CrossAttention, against explicit attention.

What is checked: rows that read the reference attend to [own keys ; projected reference keys], the other rows to
their own keys only (the official read); what another pack's attn1 patch did to the keys/values is kept; the
reference keys/values are projected once and re-projected when the weights change; the concatenating fallback used
when the UNet is not known gives the same numbers; on the CPU ComfyUI's sub-quadratic default becomes SDPA unless
an attention was asked for; an override another pack installed still runs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from comfy.ldm.modules import attention

from xnemo_pack.xnemo_core.adapters import reference_bank
from xnemo_pack.xnemo_core.adapters.reference_bank import ReferenceAttention, ReferenceAttentionPatch, ReferenceBank
from xnemo_pack.xnemo_core.adapters.unet_patch import CallState
from xnemo_pack.xnemo_core.pure.constants import PATCH_KEY

DIM, HEADS, TOKENS = 16, 2, 6
KEY = ("input", 1, 0)


class _Holder(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.transformer_blocks[0].attn1 = attn


class _FakeUNet(torch.nn.Module):
    """Just the block lists attn1_modules walks: input block 1 holds one transformer block."""

    def __init__(self, attn):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([torch.nn.ModuleList(), torch.nn.ModuleList([_Holder(attn)])])
        self.middle_block = torch.nn.ModuleList()
        self.output_blocks = torch.nn.ModuleList()


@pytest.fixture
def setup():
    torch.manual_seed(0)
    attn = attention.CrossAttention(DIM, heads=HEADS, dim_head=DIM // HEADS, operations=torch.nn)
    bank = ReferenceBank({KEY: torch.randn(1, TOKENS, DIM).half()}, (2, 3))
    return attn, bank, _FakeUNet(attn)


def state_for(bank, unet, flags, fallback=False):
    flags = torch.tensor(flags)
    return CallState(
        motion=torch.zeros(len(flags), 32, 16),
        use_reference=flags,
        bank=bank,
        frames=len(flags),
        unet=None if fallback else unet,
    )


def run_block(attn, state, n, patches=(), previous=None):
    """What ComfyUI's BasicTransformerBlock does around attn1: attn1 patches, then attn1 with transformer_options."""
    options = {
        PATCH_KEY: state,
        "block": KEY[:2],
        "block_index": KEY[2],
        "optimized_attention_override": ReferenceAttention(previous),
    }
    extra = {k: v for k, v in options.items() if k != "optimized_attention_override"}
    context, value = n, n
    for p in [*patches, ReferenceAttentionPatch()]:
        n, context, value = p(n, context, value, extra)
    return attn(n, context=context, value=value, transformer_options=options)


def explicit(attn, n, keys_in, values_in, ref, reads):
    """Official read, written out: reading rows use [keys ; ref], the others their own keys only."""
    out = []
    for i in range(n.shape[0]):
        k_src, v_src = keys_in[i : i + 1], values_in[i : i + 1]
        if reads[i]:
            k_src, v_src = torch.cat([k_src, ref], 1), torch.cat([v_src, ref], 1)
        q, k, v = attn.to_q(n[i : i + 1]), attn.to_k(k_src), attn.to_v(v_src)
        q, k, v = (t.view(1, -1, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, -1, DIM)
        out.append(attn.to_out(o))
    return torch.cat(out)


@pytest.mark.parametrize("flags", [[True, True, False, False], [False, True, True, False], [True] * 3, [False] * 2])
@pytest.mark.parametrize("fallback", [False, True])
def test_reading_rows_attend_to_the_reference(setup, flags, fallback):
    attn, bank, unet = setup
    n = torch.randn(len(flags), TOKENS, DIM)
    with torch.no_grad():
        got = run_block(attn, state_for(bank, unet, flags, fallback), n)
        want = explicit(attn, n, n, n, bank.blocks[KEY].float(), flags)
    assert (got - want).abs().max().item() < 1e-5


def test_other_packs_attn1_edits_are_kept(setup):
    attn, bank, unet = setup
    n = torch.randn(4, TOKENS, DIM)
    flags = [True, True, False, False]

    def other_pack(n, context, value, extra):  # e.g. a style patch that reweights the keys and values
        return n, context * 2.0, value - 0.5

    with torch.no_grad():
        got = run_block(attn, state_for(bank, unet, flags), n, patches=[other_pack])
        want = explicit(attn, n, n * 2.0, n - 0.5, bank.blocks[KEY].float(), flags)
        dropped = explicit(attn, n, n, n, bank.blocks[KEY].float(), flags)
    assert (got - want).abs().max().item() < 1e-5
    assert (got - dropped).abs().max().item() > 1e-2  # the edit matters, so keeping it is visible


def test_reference_projected_once_and_again_after_a_weight_change(setup):
    attn, bank, unet = setup
    n = torch.randn(4, TOKENS, DIM)
    with torch.no_grad():
        run_block(attn, state_for(bank, unet, [True, True, False, False]), n)
        first = bank._projected[KEY]
        for _ in range(3):
            run_block(attn, state_for(bank, unet, [True, True, False, False]), n)
        assert bank._projected[KEY] is first
        attn.to_k.weight.add_(0.1)  # what a LoRA patch applied in place does
        got = run_block(attn, state_for(bank, unet, [True, False]), n[:2])
        want = explicit(attn, n[:2], n[:2], n[:2], bank.blocks[KEY].float(), [True, False])
    assert bank._projected[KEY] is not first
    assert (got - want).abs().max().item() < 1e-5


def test_cpu_default_attention_is_sdpa_unless_asked(monkeypatch):
    sub_quad = attention.attention_sub_quad.__wrapped__
    assert reference_bank._default_cpu_attention(sub_quad) is attention.attention_pytorch
    split = attention.attention_split.__wrapped__
    assert reference_bank._default_cpu_attention(split) is split
    monkeypatch.setattr(reference_bank.comfy_args, "use_quad_cross_attention", True)
    assert reference_bank._default_cpu_attention(sub_quad) is sub_quad


def test_an_earlier_override_still_runs(setup):
    attn, bank, unet = setup
    n = torch.randn(2, TOKENS, DIM)
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(func)
        return func(*args, **kwargs)

    with torch.no_grad():
        got = run_block(attn, state_for(bank, unet, [True, False]), n, previous=previous)
        want = explicit(attn, n, n, n, bank.blocks[KEY].float(), [True, False])
    assert len(seen) == 2  # one call per run of rows (reading, not reading)
    assert (got - want).abs().max().item() < 1e-5


def test_single_key_cross_attention_is_its_value(setup):
    """attn2 on X-NeMo's one CLIP token: the override returns v (softmax over one key is exactly 1)."""
    attn, bank, unet = setup
    x, context = torch.randn(3, TOKENS, DIM), torch.randn(3, 1, DIM)
    state = state_for(bank, unet, [True, True, False])
    options = {PATCH_KEY: state, "optimized_attention_override": ReferenceAttention()}
    with torch.no_grad():
        got = attn(x, context=context, transformer_options=options)
        want = attn(x, context=context)  # ComfyUI's own attention, no override
    assert (got - want).abs().max().item() < 1e-6


def test_inference_weights_patched_in_place_are_reprojected_after_the_patch_callback(setup):
    """ComfyUI's weights are inference tensors: an in-place patch keeps id, data pointer and (absent) version, so
    only ComfyUI's patching callback (ON_LOAD / ON_APPLY_HOOKS -> note_weights_patched) tells the cache."""
    with torch.inference_mode():
        attn = attention.CrossAttention(DIM, heads=HEADS, dim_head=DIM // HEADS, operations=torch.nn)
        bank = ReferenceBank({KEY: torch.randn(1, TOKENS, DIM).half()}, (2, 3))
        unet = _FakeUNet(attn)
        patcher = SimpleNamespace(model=SimpleNamespace(diffusion_model=unet))
        n = torch.randn(2, TOKENS, DIM)

        def state():
            s = state_for(bank, unet, [True, False])
            s.weights_generation = reference_bank.weights_generation(unet)
            return s

        run_block(attn, state(), n)
        first = bank._projected[KEY]
        attn.to_k.weight.copy_(attn.to_k.weight * 2.0)  # what copy_to_param does
        run_block(attn, state(), n)
        assert bank._projected[KEY] is first  # nothing in the tensor says it changed
        reference_bank.note_weights_patched(patcher, None)
        got = run_block(attn, state(), n)
        want = explicit(attn, n, n, n, bank.blocks[KEY].float(), [True, False])
    assert bank._projected[KEY] is not first
    assert (got - want).abs().max().item() < 1e-5
    assert bank.cached_bytes() > 0
    bank.release()
    assert bank.cached_bytes() == 0 and not bank._cast and not bank._projected


def test_banks_in_finds_each_bank_once():
    bank, other = ReferenceBank({}, (1, 1)), ReferenceBank({}, (1, 1))
    shared = SimpleNamespace(cond=bank)
    conds = {
        "positive": [{"model_conds": {"xnemo_bank": shared, "x": SimpleNamespace(cond=torch.zeros(1))}}],
        "negative": [{"model_conds": {"xnemo_bank": shared}}, {"model_conds": {"b": SimpleNamespace(cond=other)}}],
        "empty": None,
    }
    assert reference_bank.banks_in(conds) == [bank, other]
    assert reference_bank.banks_in(None) == []
