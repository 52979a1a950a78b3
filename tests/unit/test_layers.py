"""The X-NeMo layers (xnemo_core/pure/layers) in torch alone: attention maths, the frame code, and what motion
cross-attention and temporal attention may and may not mix."""

from __future__ import annotations

import math

import pytest
import torch

from xnemo_pack.xnemo_core.pure.layers import (
    PositionalEncoding,
    XNeMoSite,
    XNeMoSites,
    sdpa_attention,
    sinusoidal_code,
)


def reference_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, inner)


def test_sdpa_attention_is_multi_head_softmax_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 32, generator=g, dtype=torch.float64) for n in (7, 5, 5))
    torch.testing.assert_close(sdpa_attention(q, k, v, heads=4), reference_attention(q, k, v, 4))


def test_frame_code_is_sin_on_even_cos_on_odd_channels():
    pe = sinusoidal_code(32, 8)
    assert pe.shape == (1, 32, 8)
    t, i = 5, 2  # channel pair 2: frequency 10000^(-4/8)
    assert pe[0, t, 2 * i].item() == pytest.approx(math.sin(t * 10000 ** (-2 * i / 8)), abs=1e-6)
    assert pe[0, t, 2 * i + 1].item() == pytest.approx(math.cos(t * 10000 ** (-2 * i / 8)), abs=1e-6)


def test_positional_encoding_refuses_windows_longer_than_the_code():
    enc = PositionalEncoding(8, 4)
    assert torch.equal(enc(torch.zeros(2, 3, 8)), sinusoidal_code(4, 8)[:, :3].expand(2, -1, -1))
    with pytest.raises(ValueError, match="lower context_length to 4 or less"):
        enc(torch.zeros(1, 5, 8))


def random_site(channels=32, seed=0) -> XNeMoSite:
    torch.manual_seed(seed)
    site = XNeMoSite(channels, token_dim=16, heads=8, max_frames=32)
    with torch.no_grad():
        for p in site.parameters():
            p.normal_(0, 0.2)
    return site.eval()


def test_temporal_attention_mixes_frames_within_a_clip_only():
    layer = random_site().temporal
    x = torch.randn(2 * 4, 32, 3, 3)  # two clips of four frames
    out = layer(x, frames=4)
    changed = x.clone()
    changed[5] += 1.0  # a frame of the second clip
    out2 = layer(changed, frames=4)
    assert torch.equal(out[:4], out2[:4]), "the first clip must not see the second"
    assert not torch.allclose(out[4], out2[4]), "frames of one clip attend to each other"


def test_temporal_attention_never_mixes_pixels():
    layer = random_site().temporal
    x = torch.randn(4, 32, 3, 3)
    changed = x.clone()
    changed[:, :, 0, 0] += 1.0
    # GroupNorm's statistics span the whole frame; without it, every pixel's sequence over frames is independent.
    layer.temporal_transformer.norm = torch.nn.Identity()
    a, b = layer(x, frames=4), layer(changed, frames=4)
    assert torch.equal(a[:, :, 2, 2], b[:, :, 2, 2])


def test_motion_cross_attention_reads_each_rows_own_tokens():
    layer = random_site().motion
    x = torch.randn(3, 32, 4, 4)
    tokens = torch.randn(3, 32, 16)
    out = layer(x, tokens)
    other = tokens.clone()
    other[1] = torch.randn(32, 16)
    out2 = layer(x, other)
    assert torch.equal(out[0], out2[0]) and torch.equal(out[2], out2[2])
    assert not torch.allclose(out[1], out2[1])


def test_site_is_motion_then_temporal_and_keeps_the_shape():
    site = random_site()
    x, tokens = torch.randn(4, 32, 4, 4), torch.randn(4, 32, 16)
    out = site(x, tokens, frames=4)
    assert out.shape == x.shape
    torch.testing.assert_close(out, site.temporal(site.motion(x, tokens), 4))


def test_sites_follow_the_channel_list():
    sites = XNeMoSites([32, 32, 64], heads=8)
    assert [s.motion.temporal_transformer.proj_in.in_features for s in sites.sites] == [32, 32, 64]


def test_site_hands_the_unet_a_contiguous_tensor(monkeypatch):
    """Issue 21: a channels-last site output made every later convolution of the block re-lay its weight out per
    call. The values are the same as `h + x` (both runs on one GEMM kernel: the oneDNN path is for inference only)."""
    from xnemo_pack.xnemo_core.pure import cpu_linear

    monkeypatch.setattr(cpu_linear, "_OP", None)
    site = random_site()
    x, tokens = torch.randn(4, 32, 4, 4), torch.randn(4, 32, 16)
    out = site(x, tokens, frames=4)
    assert out.is_contiguous()
    assert out.stride() == x.stride()
    with torch.no_grad():
        fast = site(x, tokens, frames=4)
    assert fast.is_contiguous()
    assert torch.equal(fast, out)


def test_gated_gelu_is_the_plain_product_bit_for_bit():
    from xnemo_pack.xnemo_core.pure.layers import gated_gelu

    h = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    value, gate = h.chunk(2, dim=-1)
    with torch.inference_mode():
        assert torch.equal(gated_gelu(h), value * torch.nn.functional.gelu(gate))
    h.requires_grad_(True)
    gated_gelu(h).sum().backward()  # the plain form under autograd: gradients flow
    assert h.grad is not None and h.grad.abs().sum() > 0
