"""X-NeMo motion encoder: face crop + f_rts -> 32 motion tokens of width 16 (xnemo-reference.md §2.2).

Pure torch + einops. Parameter and buffer names follow the official checkpoint (`MotEncoder_withExtra`:
`model.*`, `pe`, `bbox_proj.{0,3}.*`, `final_proj.*`) so the released file loads with `strict=True`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .constants import FACE_FEATURE_DIM, MOTION_INPUT_SIZE, MOTION_TOKEN_DIM
from .errors import CheckpointError
from .keys import check_keys
from .layers import FeedForward

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(q, k, v), each [batch, heads, tokens, head_dim] -> [batch, heads, tokens, head_dim]."""

OFFICIAL_ATTENTION_HEAD_DIM = 128  # official FAN attention blocks: 8 heads x 128 = 1024 wide
SMALL_ATTENTION_HEAD_DIM = 16  # head width assumed for narrow test checkpoints (the tiny fixture: 2 x 16)


def attention_heads_for_width(inner_dim: int) -> int:
    """Head count of a FAN attention block, which shapes alone cannot tell.

    Rule: heads of 128 wherever the width divides by 128 (the official 1024 -> 8 x 128), otherwise heads of 16
    (the tiny fixture's 32 -> 2 x 16). Pass `attention_heads` to `from_state_dict` for anything else.
    """
    for head_dim in (OFFICIAL_ATTENTION_HEAD_DIM, SMALL_ATTENTION_HEAD_DIM):
        if inner_dim % head_dim == 0:
            return inner_dim // head_dim
    raise CheckpointError(
        f"motion encoder attention width {inner_dim} is not a multiple of {OFFICIAL_ATTENTION_HEAD_DIM} or "
        f"{SMALL_ATTENTION_HEAD_DIM}, so the head count cannot be guessed; pass attention_heads explicitly"
    )


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Fixed sin-cos table [len(positions), dim]: first half sin, second half cos (MAE / diffusers layout).

    Computed in float64 and rounded once to float32, as the official numpy code does.
    """
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # [M, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def sincos_2d(dim: int, grid_size: int) -> Tensor:
    """2-D sin-cos table [grid_size**2, dim] for row-major patches: first half encodes the column, second the row.

    Equals diffusers' get_2d_sincos_pos_embed(dim, grid_size, base_size=grid_size, interpolation_scale=1).
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # each [g, g]
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


class InferenceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics (the official model runs in eval mode).

    Casts its statistics to the input's dtype, so it also runs when ComfyUI stores weights in a lower precision
    than it computes in (comfy.ops has no BatchNorm of its own).
    """

    def forward(self, x: Tensor) -> Tensor:
        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=x.device, dtype=x.dtype)

        return F.batch_norm(
            x, cast(self.running_mean), cast(self.running_var), cast(self.weight), cast(self.bias), False, 0.0, self.eps
        )


class HierarchicalResidualBlock(nn.Module):
    """FAN's hierarchical, parallel and multi-scale block (Bulat & Tzimiropoulos 2017; `ConvBlock` officially).

    Three pre-activated 3x3 convs of out/2, out/4, out/4 channels whose outputs are concatenated, plus a residual
    (1x1 conv when the width changes). [N, in, H, W] -> [N, out, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, device=None, dtype=None, operations=nn):
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        kw = dict(device=device, dtype=dtype)
        self.bn1 = InferenceBatchNorm2d(in_channels, **kw)
        self.conv1 = operations.Conv2d(in_channels, half, 3, padding=1, bias=False, **kw)
        self.bn2 = InferenceBatchNorm2d(half, **kw)
        self.conv2 = operations.Conv2d(half, quarter, 3, padding=1, bias=False, **kw)
        self.bn3 = InferenceBatchNorm2d(quarter, **kw)
        self.conv3 = operations.Conv2d(quarter, quarter, 3, padding=1, bias=False, **kw)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                InferenceBatchNorm2d(in_channels, **kw),
                nn.ReLU(),
                operations.Conv2d(in_channels, out_channels, 1, bias=False, **kw),
            )

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], dim=1) + residual


class Hourglass(nn.Module):
    """FAN hourglass (Newell et al. 2016): recursive pool -> blocks -> bilinear upsample, with a skip per level.

    Submodules keep the official names b1_<level>, b2_<level>, b3_<level> and b2_plus_1 at the bottom.
    [N, C, H, W] -> [N, C, H, W]; H and W must divide by 2**depth.
    """

    def __init__(self, depth: int, channels: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            for name in (f"b1_{level}", f"b2_{level}", f"b3_{level}"):
                self.add_module(name, HierarchicalResidualBlock(channels, channels, device, dtype, operations))
        self.b2_plus_1 = HierarchicalResidualBlock(channels, channels, device, dtype, operations)

    def _level(self, level: int, x: Tensor) -> Tensor:
        skip = self.get_submodule(f"b1_{level}")(x)  # the official dropout(0.5) here is inactive at inference
        low = self.get_submodule(f"b2_{level}")(F.max_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self.b2_plus_1(low)
        low = self.get_submodule(f"b3_{level}")(low)
        return skip + F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._level(self.depth, x)


class PatchEmbedding(nn.Module):
    """Patchify conv plus a fixed 2-D sin-cos position table (diffusers `PatchEmbed`, no layer norm).

    [N, C, S, S] -> [N, (S/p)**2, dim]. The table is a non-persistent buffer, as in diffusers: not in the checkpoint.
    It is moved to the activations' device and dtype where used: ComfyUI moves only modules that hold weights, so in
    its usual per-module loading (any GPU without --highvram, and every partial load) the table stays where it was.
    """

    def __init__(
        self, sample_size: int, patch_size: int, in_channels: int, dim: int, device=None, dtype=None, operations=nn
    ):
        super().__init__()
        self.proj = operations.Conv2d(in_channels, dim, patch_size, stride=patch_size, device=device, dtype=dtype)
        table = sincos_2d(dim, sample_size // patch_size).unsqueeze(0)  # [1, L, dim]
        # A fixed table, not a weight: it stays real when the module is built on the meta device to be assigned.
        on_meta = device is not None and torch.device(device).type == "meta"
        self.register_buffer("pos_embed", table if on_meta else table.to(device=device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(self.proj(x), "n c h w -> n (h w) c")  # [N, L, dim]
        return x + self.pos_embed.to(device=x.device, dtype=x.dtype)


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the patch tokens of one image (diffusers `Attention` layout, no q/k/v bias).

    [N, L, dim] -> [N, L, dim].
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, attention_fn: AttentionFn, device=None, dtype=None, operations=nn
    ):
        super().__init__()
        inner = heads * head_dim
        kw = dict(device=device, dtype=dtype)
        self.heads = heads
        self.attention_fn = attention_fn
        self.to_q = operations.Linear(dim, inner, bias=False, **kw)
        self.to_k = operations.Linear(dim, inner, bias=False, **kw)
        self.to_v = operations.Linear(dim, inner, bias=False, **kw)
        self.to_out = nn.ModuleList([operations.Linear(inner, dim, **kw)])  # official index 1 is an inactive dropout

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (
            rearrange(proj(x), "n l (h d) -> n h l d", h=self.heads)  # [N, heads, L, head_dim]
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = self.attention_fn(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v, [N, heads, L, head_dim]
        return self.to_out[0](rearrange(out, "n h l d -> n l (h d)"))


class SpatialTransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(LN(x)), then x + ff(LN(x)). [N, L, dim] -> [N, L, dim]."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        ff_hidden: int,
        attention_fn: AttentionFn,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.attention_blocks = nn.ModuleList(
            [SpatialSelfAttention(dim, heads, head_dim, attention_fn, **kw, operations=operations)]
        )
        self.norms = nn.ModuleList([operations.LayerNorm(dim, **kw)])
        self.ff = FeedForward(dim, ff_hidden, device, dtype, operations)
        self.ff_norm = operations.LayerNorm(dim, **kw)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attention_blocks[0](self.norms[0](x)) + x
        return self.ff(self.ff_norm(x)) + x


class SpatialAttentionBlock(nn.Module):
    """One of FAN_SA's three added attention blocks (att_1/att_2/att_3; officially a `TemporalTransformer3DModel`
    used with a single frame and "Spatial_Self" attention).

    GroupNorm -> patchify to (S/p)**2 tokens of width heads*head_dim -> one transformer layer -> each token's width
    split back into p x p pixels -> proj_out to the input channels -> residual. [N, C, S, S] -> [N, C, S, S].
    """

    def __init__(
        self,
        in_channels: int,
        sample_size: int,
        patch_size: int,
        heads: int,
        head_dim: int,
        ff_hidden: int,
        attention_fn: AttentionFn,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        dim = heads * head_dim
        if dim % (patch_size * patch_size):
            raise ValueError(f"attention width {dim} must divide by patch_size**2 = {patch_size * patch_size}")
        kw = dict(device=device, dtype=dtype)
        self.patch_size = patch_size
        self.norm = operations.GroupNorm(32, in_channels, eps=1e-6, affine=True, **kw)
        self.pos_embed = PatchEmbedding(sample_size, patch_size, in_channels, dim, device, dtype, operations)
        self.transformer_blocks = nn.ModuleList(
            [SpatialTransformerLayer(dim, heads, head_dim, ff_hidden, attention_fn, device, dtype, operations)]
        )
        self.proj_out = operations.Linear(dim // (patch_size * patch_size), in_channels, **kw)

    def forward(self, x: Tensor) -> Tensor:
        grid = x.shape[-1] // self.patch_size
        h = self.pos_embed(self.norm(x))  # [N, L, dim]
        for layer in self.transformer_blocks:
            h = layer(h)
        # Each token's width holds a p x p patch of dim/p**2-wide pixels, in (row, column, channel) order.
        h = rearrange(h, "n (gh gw) (p q c) -> n gh gw p q c", gh=grid, p=self.patch_size, q=self.patch_size)
        h = self.proj_out(h)  # [N, gh, gw, p, q, C]
        h = rearrange(h, "n gh gw p q c -> n c (gh p) (gw q)")  # [N, C, S, S]
        return h + x


class FaceAlignmentNetwork(nn.Module):
    """FAN with spatial self-attention (official `FAN_SA`, from PD-FGC): 224x224 face crop -> 512-d motion feature.

    conv 7x7/2 -> block 64->128 (112^2) -> att_1 (patch 4) -> max-pool -> blocks 128->128->256 (56^2) -> att_2
    (patch 2) -> hourglass -> block -> 1x1 conv + BN -> att_3 (patch 2) -> 68 landmark heatmaps -> conv 3x3/2
    (28^2 map) -> ReLU -> fc 784 -> feature_dim. [N, 3, 224, 224] -> [N, feature_dim].
    """

    def __init__(
        self,
        attention_heads: int,
        attention_head_dim: int,
        ff_hidden: int,
        hourglass_depth: int,
        feature_dim: int,
        attention_fn: AttentionFn,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        block = dict(device=device, dtype=dtype, operations=operations)
        attention = dict(
            heads=attention_heads, head_dim=attention_head_dim, ff_hidden=ff_hidden, attention_fn=attention_fn, **block
        )
        self.conv1 = operations.Conv2d(3, 64, 7, stride=2, padding=3, **kw)
        self.bn1 = InferenceBatchNorm2d(64, **kw)
        self.conv2 = HierarchicalResidualBlock(64, 128, **block)
        self.att_1 = SpatialAttentionBlock(128, sample_size=112, patch_size=4, **attention)
        self.conv3 = HierarchicalResidualBlock(128, 128, **block)
        self.conv4 = HierarchicalResidualBlock(128, 256, **block)
        self.att_2 = SpatialAttentionBlock(256, sample_size=56, patch_size=2, **attention)
        self.m0 = Hourglass(hourglass_depth, 256, **block)
        self.top_m_0 = HierarchicalResidualBlock(256, 256, **block)
        self.conv_last0 = operations.Conv2d(256, 256, 1, **kw)
        self.bn_end0 = InferenceBatchNorm2d(256, **kw)
        self.att_3 = SpatialAttentionBlock(256, sample_size=56, patch_size=2, **attention)
        self.l0 = operations.Conv2d(256, 68, 1, **kw)
        self.bn5 = InferenceBatchNorm2d(68, **kw)
        self.conv6 = operations.Conv2d(68, 1, 3, stride=2, padding=1, **kw)
        self.fc = operations.Linear(28 * 28, feature_dim, **kw)

    def forward(self, x: Tensor) -> Tensor:
        # 1. Stem and first attention at 112x112.
        x = F.relu(self.bn1(self.conv1(x)))  # [N, 64, 112, 112]
        x = self.att_1(self.conv2(x))  # [N, 128, 112, 112]
        # 2. Down to 56x56, second attention.
        x = self.conv4(self.conv3(F.max_pool2d(x, 2)))  # [N, 256, 56, 56]
        x = self.att_2(x)
        # 3. Hourglass and third attention.
        x = self.top_m_0(self.m0(x))
        x = self.att_3(self.bn_end0(self.conv_last0(x)))  # [N, 256, 56, 56]
        # 4. Landmark heatmaps -> one 28x28 map -> feature.
        heatmaps = F.relu(self.bn5(self.l0(F.relu(x))))  # [N, 68, 56, 56]
        flat = rearrange(self.conv6(heatmaps), "n c h w -> n (c h w)")  # [N, 784]
        return self.fc(F.relu(flat))


class _MotionFusionLayers(nn.Module):
    """The fusion head's layers and math, shared by `MotionFusion` and `MotionEncoder` (official names at the root).

    tokens = rearrange(final_proj(cat(face_feature, bbox_proj(f_rts))), "n (l c) -> n l c") + pe.
    """

    def __init__(
        self,
        feature_dim: int,
        token_dim: int,
        bbox_dim: int,
        bbox_embed_dim: int,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__()
        if feature_dim % token_dim:
            raise ValueError(f"feature_dim {feature_dim} must divide by token_dim {token_dim}")
        kw = dict(device=device, dtype=dtype)
        self.feature_dim, self.token_dim = feature_dim, token_dim
        self.bbox_dim, self.bbox_embed_dim = bbox_dim, bbox_embed_dim
        pe = sincos_1d(token_dim, torch.arange(feature_dim // token_dim)).unsqueeze(0)  # [1, tokens, token_dim]
        self.register_buffer("pe", pe.to(device=device))  # float32 like the checkpoint; cast where used
        self.bbox_proj = nn.Sequential(
            operations.Linear(bbox_dim, bbox_embed_dim, **kw),
            nn.ReLU(),
            nn.Identity(),  # keeps the official key index bbox_proj.3
            operations.Linear(bbox_embed_dim, bbox_embed_dim, **kw),
        )
        self.final_proj = operations.Linear(feature_dim + bbox_embed_dim, feature_dim, **kw)

    def fusion_sizes(self) -> dict[str, int]:
        return dict(
            feature_dim=self.feature_dim,
            token_dim=self.token_dim,
            bbox_dim=self.bbox_dim,
            bbox_embed_dim=self.bbox_embed_dim,
        )

    def fuse(self, face_features: Tensor, f_rts: Tensor) -> Tensor:
        """face_features [N, feature_dim], f_rts [N, bbox_dim] = (dy, dx, scale) -> tokens [N, tokens, token_dim]."""
        if face_features.ndim != 2 or f_rts.ndim != 2 or face_features.shape[0] != f_rts.shape[0]:
            raise ValueError(
                f"fuse expects face_features [N, {self.feature_dim}] and f_rts [N, {self.bbox_dim}], "
                f"got {tuple(face_features.shape)} and {tuple(f_rts.shape)}"
            )
        box = self.bbox_proj(f_rts)  # [N, bbox_embed_dim]
        fused = self.final_proj(torch.cat([face_features, box], dim=1))  # [N, feature_dim]
        tokens = rearrange(fused, "n (l c) -> n l c", c=self.token_dim)  # [N, tokens, token_dim]
        return tokens + self.pe.to(device=tokens.device, dtype=tokens.dtype)  # a buffer ComfyUI may not move


class MotionFusion(_MotionFusionLayers):
    """The motion encoder's fusion head alone: 512-d face feature + f_rts -> motion tokens.

    Rides inside motion payloads so features can be edited or interpolated and then re-fused without the backbone.
    forward: face_features [N, 512], f_rts [N, 3] -> [N, 32, 16].
    """

    def forward(self, face_features: Tensor, f_rts: Tensor) -> Tensor:
        return self.fuse(face_features, f_rts)


def own_leftovers(cast: dict[str, Tensor], source: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copy the tensors a converting load kept as they were (`cast[k] is source[k]`: sin-cos tables, counters).

    They are views of a memory-mapped checkpoint, and one view keeps the whole file mapped and resident for the
    model's life: about 1 GB next to the converted weights for the official fp16 temporal file loaded as fp32 (issue
    21). When nothing was converted the mapped file is the weights, and everything stays as it is."""
    if all(v is source[k] for k, v in cast.items()):
        return cast
    return {k: v.clone() if v is source[k] else v for k, v in cast.items()}


class MotionEncoder(_MotionFusionLayers):
    """X-NeMo's 1-D latent motion descriptor (official `MotEncoder_withExtra`): face crop + f_rts -> motion tokens.

    A FAN backbone with spatial attention maps each crop to 512 numbers, fused with the embedded (dy, dx, scale)
    box parameters into 32 tokens x 16 dims plus a fixed sin-cos table `pe`.
    crops [N, 3, 224, 224] in [-1, 1], f_rts [N, 3] -> tokens [N, 32, 16].

    Departures from the official code: inputs are 4-D only (the official 5-D path just flattens frames, so callers
    flatten instead); inference only (BatchNorm always uses running statistics, dropouts are omitted); attention
    goes through `attention_fn` (default `F.scaled_dot_product_attention`); the fixed sin-cos tables stay float32
    when the weights are cast, and are cast to the activation dtype where used.
    """

    def __init__(
        self,
        attention_heads: int = 8,
        attention_head_dim: int = OFFICIAL_ATTENTION_HEAD_DIM,
        ff_mult: int = 4,
        hourglass_depth: int = 4,
        feature_dim: int = FACE_FEATURE_DIM,
        token_dim: int = MOTION_TOKEN_DIM,
        bbox_dim: int = 3,
        bbox_embed_dim: int = 64,
        attention_fn: AttentionFn | None = None,
        device=None,
        dtype=None,
        operations=nn,
    ):
        super().__init__(feature_dim, token_dim, bbox_dim, bbox_embed_dim, device, dtype, operations)
        self.attention_heads, self.attention_head_dim = attention_heads, attention_head_dim
        self.ff_mult, self.hourglass_depth = ff_mult, hourglass_depth
        self.model = FaceAlignmentNetwork(
            attention_heads,
            attention_head_dim,
            ff_mult * attention_heads * attention_head_dim,
            hourglass_depth,
            feature_dim,
            attention_fn or F.scaled_dot_product_attention,
            device,
            dtype,
            operations,
        )

    @classmethod
    def from_state_dict(
        cls,
        sd: dict[str, Tensor],
        dtype: torch.dtype | None = None,
        device=None,
        operations=nn,
        attention_heads: int | None = None,
        attention_fn: AttentionFn | None = None,
    ) -> MotionEncoder:
        """Build from an official motion-encoder state dict, reading every size from the tensors.

        The head count is `attention_heads` or, if None, `attention_heads_for_width(width)`. Loads strictly, each
        weight cast to `dtype` (the fixed sin-cos tables stay float32 and are cast where used, so a float16-stored
        model computing in float32 keeps them exact); raises CheckpointError naming every missing and unexpected key
        and every shape mismatch. The module is built on the meta device and the (cast) checkpoint tensors become its
        weights, so loading holds no second copy. Returns the module in eval mode with gradients off.
        """
        sizes = _read_sizes(sd)
        width = sizes.pop("attention_width")
        heads = attention_heads or attention_heads_for_width(width)
        if width % heads:
            raise CheckpointError(f"motion encoder attention width {width} does not split into {heads} heads")
        module = cls(
            attention_heads=heads,
            attention_head_dim=width // heads,
            attention_fn=attention_fn,
            device="meta",
            operations=operations,
            **sizes,
        )
        _check_state_dict(module, sd)
        declared = module.state_dict()

        def cast(key: str, value: Tensor) -> Tensor:
            keep = dtype is None or not value.is_floating_point() or key == "pe"
            return value.to(declared[key].dtype if keep else dtype)

        module.load_state_dict(own_leftovers({k: cast(k, v) for k, v in sd.items()}, sd), strict=True, assign=True)
        if device is not None:
            module.to(device)
        return module.eval().requires_grad_(False)

    def encode_face(self, crops: Tensor) -> Tensor:
        """crops [N, 3, 224, 224] in [-1, 1] -> raw face motion features [N, 512] (official encode_facemot)."""
        expected = (3, MOTION_INPUT_SIZE, MOTION_INPUT_SIZE)
        if crops.ndim != 4 or tuple(crops.shape[1:]) != expected:
            raise ValueError(
                f"motion encoder expects face crops [N, {', '.join(map(str, expected))}], "
                f"got {tuple(crops.shape)}; flatten video frames into N first"
            )
        return self.model(crops)

    def forward(self, crops: Tensor, f_rts: Tensor) -> Tensor:
        """crops [N, 3, 224, 224] in [-1, 1], f_rts [N, 3] -> motion tokens [N, 32, 16]."""
        return self.fuse(self.encode_face(crops), f_rts)

    def fusion_head(self) -> MotionFusion:
        """An fp32 CPU deep copy of the fusion head (plain torch.nn layers), independent of this module."""
        head = MotionFusion(**self.fusion_sizes())
        own = {
            k: v.detach().to("cpu", torch.float32).clone()
            for k, v in self.state_dict().items()
            if k.split(".")[0] in ("pe", "bbox_proj", "final_proj")
        }
        head.load_state_dict(own, strict=True)
        return head.eval().requires_grad_(False)


_ATTENTION_WIDTH_KEY = "model.att_1.transformer_blocks.0.attention_blocks.0.to_q.weight"
_FF_OUT_KEY = "model.att_1.transformer_blocks.0.ff.net.2.weight"


def _read_sizes(sd: dict[str, Tensor]) -> dict[str, int]:
    """Constructor sizes found in a state dict; official values stand in for absent keys (reported later)."""
    sizes: dict[str, int] = {}
    if _ATTENTION_WIDTH_KEY in sd:
        sizes["attention_width"] = sd[_ATTENTION_WIDTH_KEY].shape[0]
        if _FF_OUT_KEY in sd:
            sizes["ff_mult"] = max(1, sd[_FF_OUT_KEY].shape[1] // sizes["attention_width"])
    else:
        sizes["attention_width"] = 8 * OFFICIAL_ATTENTION_HEAD_DIM
    levels = [int(m.group(1)) for k in sd if (m := re.match(r"model\.m0\.b1_(\d+)\.", k))]
    if levels:
        sizes["hourglass_depth"] = max(levels)
    if "model.fc.weight" in sd:
        sizes["feature_dim"] = sd["model.fc.weight"].shape[0]
    if "pe" in sd and sd["pe"].ndim == 3:
        sizes["token_dim"] = sd["pe"].shape[-1]
    if "bbox_proj.0.weight" in sd:
        sizes["bbox_embed_dim"], sizes["bbox_dim"] = sd["bbox_proj.0.weight"].shape
    return sizes


def _check_state_dict(module: nn.Module, sd: dict[str, Tensor]) -> None:
    check_keys(
        {k: v.shape for k, v in module.state_dict().items()},
        sd,
        "motion encoder checkpoint",
        "Use the released xnemo_motion_encoder.pth, unmodified.",
    )


__all__ = [
    "AttentionFn",
    "MotionEncoder",
    "MotionFusion",
    "FaceAlignmentNetwork",
    "attention_heads_for_width",
    "sincos_1d",
    "sincos_2d",
]
