"""X-NeMo's new UNet layers: motion cross-attention ("disentangled latent attention") and temporal attention.

Both are the AnimateDiff "vanilla" module shape (GroupNorm -> proj_in -> one transformer block of two attentions and a
GEGLU feed-forward -> proj_out, residual); they differ only in what the attentions look at:
- motion (paper §3.2): every pixel of a frame attends to that frame's 32 motion tokens (16-d keys/values);
- temporal (AnimateDiff v2): every pixel attends to itself across the frames of a window, with a sinusoidal
  position code (max 32 frames) added before each attention.

Parameter names equal the official checkpoint keys under `<site>.{motion,temporal}_modules.<i>.`, so the official
files load strictly. Layers come from `operations` (ComfyUI passes `comfy.ops`), attention from an injectable function;
nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import cpu_linear

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


SHORT_KEYS = 64  # CPU: up to this many keys, plain matmul + softmax beats SDPA's flash kernel (measured 1.6-2x)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on [B, N, heads*dim] tensors (ComfyUI's `optimized_attention` convention).

    SDPA, except on the CPU for short key sequences (the temporal layers' <= 32 frames, the 32 motion tokens), where
    torch's blocked flash kernel costs more than the plain product: same maths, float32 softmax."""
    b, _, inner = q.shape
    q, k, v = (t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    if q.device.type == "cpu" and k.shape[2] <= SHORT_KEYS:
        weights = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-1, -2)).softmax(dim=-1)
        out = torch.matmul(weights, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, inner)


def sinusoidal_code(length: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos frame code [1, length, dim] (sin on even channels, cos on odd)."""
    position = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


class PositionalEncoding(nn.Module):
    """Adds the frame code to a [B, frames, C] sequence. `pe` is stored in the official temporal checkpoint."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_code(max_len, dim))

    @property
    def max_len(self) -> int:
        return self.pe.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.max_len:
            raise ValueError(
                f"a context window of {x.shape[1]} frames exceeds the temporal layers' limit of {self.max_len}; "
                f"lower context_length to {self.max_len} or less"
            )
        return x + self.pe[:, : x.shape[1]].to(dtype=x.dtype, device=x.device)


class Attention(nn.Module):
    """Attention with the official parameter names (`to_q/to_k/to_v` without bias, `to_out.0` with bias)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None = None,
        position_len: int = 0,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        self.heads = heads
        kv_dim = context_dim or dim
        self.to_q = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.to_k = operations.Linear(kv_dim, dim, bias=False, device=device, dtype=dtype)
        self.to_v = operations.Linear(kv_dim, dim, bias=False, device=device, dtype=dtype)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, device=device, dtype=dtype), nn.Identity()])
        self.pos_encoder = PositionalEncoding(dim, position_len) if position_len else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, attention: AttentionFn = sdpa_attention
    ) -> torch.Tensor:
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)


def gated_gelu(projected: torch.Tensor) -> torch.Tensor:
    """`value * gelu(gate)` of a GEGLU projection [.., 2 * hidden]. At inference the product is written into the GELU's
    output instead of a third buffer of the block's largest activation (the same products, bit for bit: a float
    product does not depend on the order of its factors); 0.65x the time of the two-buffer form at the official
    widths on the CPU. With autograd on, the plain form."""
    value, gate = projected.chunk(2, dim=-1)
    if torch.is_grad_enabled():
        return value * F.gelu(gate)
    return F.gelu(gate).mul_(value)


def plain_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a linear layer whose weights nothing rewrites per call, else None. ComfyUI's per-call casts
    and weight functions (LoRA hooks, low-VRAM patches) are read by attribute name: this room never imports it."""
    if getattr(layer, "comfy_cast_weights", False) or getattr(layer, "weight_function", None):
        return None
    if getattr(layer, "bias_function", None):
        return None
    return layer.weight, layer.bias


def geglu(proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GEGLU of `x` with the projection layer `proj`: fused on a float32 CPU (`cpu_linear.geglu`), else the layer and
    `gated_gelu`."""
    weights = plain_weights(proj)
    if weights is not None:
        out = cpu_linear.geglu(x, *weights)
        if out is not None:
            return out
    return gated_gelu(proj(x))


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): [.., dim] -> [.., hidden]."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.proj = operations.Linear(dim, hidden * 2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return geglu(self.proj, x)


class FeedForward(nn.Module):
    """GEGLU feed-forward; `net` indices 0 and 2 match diffusers' keys (index 1, a dropout, is a no-op here)."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.net = nn.ModuleList(
            [
                GEGLU(dim, hidden, device, dtype, operations),
                nn.Identity(),
                operations.Linear(hidden, dim, device=device, dtype=dtype),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Two pre-norm attentions, then a pre-norm feed-forward, each with a residual."""

    def __init__(
        self, dim: int, heads: int, context_dim: int | None, position_len: int, device=None, dtype=None, operations=nn
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.attention_blocks = nn.ModuleList(
            [Attention(dim, heads, context_dim, position_len, operations=operations, **kw) for _ in range(2)]
        )
        self.norms = nn.ModuleList([operations.LayerNorm(dim, **kw) for _ in range(2)])
        self.ff = FeedForward(dim, dim * 4, operations=operations, **kw)  # diffusers' 4x GEGLU
        self.ff_norm = operations.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, attention: AttentionFn) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), context, attention) + x
        return self.ff(self.ff_norm(x)) + x


class VanillaTransformer(nn.Module):
    """GroupNorm -> proj_in -> TransformerBlock -> proj_out, residual (the official `TemporalTransformer3DModel`)."""

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        context_dim: int | None = None,
        position_len: int = 0,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, affine=True, **kw)
        self.proj_in = operations.Linear(channels, channels, **kw)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, context_dim, position_len, operations=operations, **kw)]
        )
        self.proj_out = operations.Linear(channels, channels, **kw)


class MotionCrossAttention(nn.Module):
    """Motion injection: each frame's pixels attend to that frame's motion tokens (paper §3.2).

    Input x [B*F, C, H, W] and tokens [B*F, 32, 16] (one row of tokens per image row); output the same shape as x.
    """

    def __init__(self, channels: int, token_dim: int = 16, heads: int = 8, device=None, dtype=None, operations=nn):
        super().__init__()
        self.temporal_transformer = VanillaTransformer(
            channels, heads, context_dim=token_dim, device=device, dtype=dtype, operations=operations
        )

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, attention: AttentionFn = sdpa_attention) -> torch.Tensor:
        t = self.temporal_transformer
        rows, channels, height, width = x.shape
        h = t.norm(x)
        h = h.permute(0, 2, 3, 1).reshape(rows, height * width, channels)  # [BF, HW, C]
        h = t.proj_in(h)
        for block in t.transformer_blocks:
            h = block(h, tokens.to(h.dtype), attention)
        h = t.proj_out(h)
        h = h.reshape(rows, height, width, channels).permute(0, 3, 1, 2)  # [BF, C, H, W]
        return h + x


class TemporalAttention(nn.Module):
    """AnimateDiff-v2 temporal layer: each pixel attends across the frames of its window.

    Input x [B*F, C, H, W] with `frames` = F consecutive rows per clip; output the same shape.
    """

    def __init__(self, channels: int, heads: int = 8, max_frames: int = 32, device=None, dtype=None, operations=nn):
        super().__init__()
        self.temporal_transformer = VanillaTransformer(
            channels, heads, position_len=max_frames, device=device, dtype=dtype, operations=operations
        )

    def forward(self, x: torch.Tensor, frames: int, attention: AttentionFn = sdpa_attention) -> torch.Tensor:
        t = self.temporal_transformer
        rows, channels, height, width = x.shape
        h = t.norm(x)
        h = h.permute(0, 2, 3, 1).reshape(rows, height * width, channels)
        h = t.proj_in(h)
        h = rearrange(h, "(b f) d c -> (b d) f c", f=frames)  # sequences over frames
        for block in t.transformer_blocks:
            h = block(h, None, attention)
        h = rearrange(h, "(b d) f c -> (b f) d c", d=height * width)
        h = t.proj_out(h)
        h = h.reshape(rows, height, width, channels).permute(0, 3, 1, 2)
        # The site's output goes back to the UNet contiguous: `h + x` would be channels-last (h's layout), which
        # GroupNorm and SiLU keep, so every later convolution of the block re-laid its weight out per call (issue 21).
        # Inference writes the sum straight into a contiguous tensor (out= has no autograd).
        if torch.is_grad_enabled():
            return (h + x).contiguous()
        return torch.add(h, x, out=torch.empty_like(x, memory_format=torch.contiguous_format))


class XNeMoSite(nn.Module):
    """One of the 21 places X-NeMo adds layers: motion cross-attention, then temporal attention."""

    def __init__(
        self,
        channels: int,
        token_dim: int = 16,
        heads: int = 8,
        max_frames: int = 32,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype, operations=operations)
        self.motion = MotionCrossAttention(channels, token_dim, heads, **kw)
        self.temporal = TemporalAttention(channels, heads, max_frames, **kw)

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, frames: int, attention: AttentionFn = sdpa_attention
    ) -> torch.Tensor:
        return self.temporal(self.motion(x, tokens, attention), frames, attention)


class XNeMoSites(nn.Module):
    """All sites of one UNet, in diffusers order (down blocks, mid block, up blocks)."""

    def __init__(
        self,
        channels: list[int],
        token_dim: int = 16,
        heads: int = 8,
        max_frames: int = 32,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        self.sites = nn.ModuleList(
            [
                XNeMoSite(c, token_dim, heads, max_frames, device=device, dtype=dtype, operations=operations)
                for c in channels
            ]
        )
