"""Full-size X-NeMo checkpoints through our loader, with meta tensors (shapes and dtypes only: no memory, no weights).

The official files (~9 GB) are not redistributable, so full-size state dicts are synthesised here with the official
key names and shapes, built without xnemo_core so the check is not circular:
- denoising and reference UNet: the state dict of diffusers' own `UNet2DConditionModel` with the SD1.5 config
  (channels 320/640/1280/1280, attention_head_dim 8, cross_attention_dim 768), constructed on the meta device; the
  reference file drops `conv_norm_out`/`conv_out` as the official one does;
- the 21 `motion_modules` / `temporal_modules`: the key names of the tiny fixture files, placed after every ResNet of
  the diffusers UNet with that ResNet's width C; shapes from the official rule (C x C projections, 16 -> C for the
  motion modules' to_k/to_v, GEGLU 8C x C then C x 4C, `pos_encoder.pe` [1, 32, C]). The same rule applied to the
  tiny diffusers UNet must give exactly the fixture's keys and shapes, which checks the rule and the site placement;
- motion encoder: the fixture file's keys with the three FAN attention blocks widened to the official 1024
  (8 heads x 128); everything else in that file already has its official size.

The parameter counts are compared with ../shared/docs/xnemo-reference.md §2-3. Then the four dicts go through the real
`load_xnemo` (file reading replaced by these dicts, modules built on the meta device, so `load_state_dict` runs its
strict key and shape check but copies nothing) and through the individual validation steps.
"""

from __future__ import annotations

import re

import pytest
import torch

from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt
from xnemo_pack.xnemo_core.adapters import model as xmodel
from xnemo_pack.xnemo_core.pure.errors import CheckpointError

META = torch.device("meta")
SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
MOTION_TOKEN_DIM = 16
TEMPORAL_PE_LEN = 32
ENCODER_WIDTH = 1024  # official FAN attention blocks: 8 heads x 128
HEAD = ("conv_norm_out.", "conv_out.")
SITE = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.(motion_modules|temporal_modules)\.(\d+)\.(.+)$")
FILES = ckpt.CHECKPOINT_FILES


# ---------------------------------------------------------------------------------------------------------------
# Building the full-size dicts (no xnemo_core involved)
# ---------------------------------------------------------------------------------------------------------------


def diffusers_unet(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def site_widths(unet) -> dict[str, int]:
    """'<block>.{kind}.<j>' -> width of the ResNet the site follows, in diffusers order (down, mid, up)."""
    out = {}
    for i, block in enumerate(unet.down_blocks):
        for j, resnet in enumerate(block.resnets):
            out[f"down_blocks.{i}.{{kind}}.{j}"] = resnet.out_channels
    out["mid_block.{kind}.0"] = unet.mid_block.resnets[0].out_channels
    for i, block in enumerate(unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            out[f"up_blocks.{i}.{{kind}}.{j}"] = resnet.out_channels
    return out


def site_shape(suffix: str, channels: int, kind: str) -> tuple[int, ...]:
    """Official shape of `<site>.<kind>.<i>.<suffix>` at width C (reference doc §2.3, §2.5)."""
    c = channels
    if suffix.endswith("pos_encoder.pe"):
        return (1, TEMPORAL_PE_LEN, c)
    if suffix.endswith(("to_k.weight", "to_v.weight")) and kind == "motion_modules":
        return (c, MOTION_TOKEN_DIM)
    if suffix.endswith("ff.net.0.proj.weight"):
        return (8 * c, c)
    if suffix.endswith("ff.net.0.proj.bias"):
        return (8 * c,)
    if suffix.endswith("ff.net.2.weight"):
        return (c, 4 * c)
    if suffix.endswith(".weight") and re.search(r"(to_[qkv]|to_out\.0|proj_in|proj_out)\.weight$", suffix):
        return (c, c)
    return (c,)  # GroupNorm / LayerNorm parameters and biases


def site_suffixes(fixture_sd: dict, kind: str) -> list[str]:
    head = f"down_blocks.0.{kind}.0."
    return [k[len(head) :] for k in fixture_sd if k.startswith(head)]


def site_dict(unet, suffixes: list[str], kind: str, dtype=torch.float16) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, c in site_widths(unet).items():
        for suffix in suffixes:
            shape = site_shape(suffix, c, kind)
            out[f"{prefix.format(kind=kind)}.{suffix}"] = torch.empty(
                shape, dtype=torch.float32 if suffix.endswith(".pe") else dtype, device=META
            )
    return out


def encoder_shape(key: str, fixture_sd: dict, width: int) -> tuple[int, ...]:
    """Official shape of a motion-encoder key: FAN attention blocks at `width`, all else as in the fixture."""
    m = re.match(r"^model\.(att_\d)\.(.+)$", key)
    if not m:
        return tuple(fixture_sd[key].shape)
    block, rest = m.groups()
    patch_weight = fixture_sd[f"model.{block}.pos_embed.proj.weight"]
    in_channels, patch = patch_weight.shape[1], patch_weight.shape[2]
    if rest == "pos_embed.proj.weight":
        return (width, in_channels, patch, patch)
    if rest == "proj_out.weight":
        return (in_channels, width // (patch * patch))
    if rest in ("norm.weight", "norm.bias", "proj_out.bias"):
        return (in_channels,)
    return site_shape(rest, width, "temporal_modules")  # same transformer layout, self-attention (W x W)


def encoder_dict(fixture_sd: dict, width: int) -> dict[str, torch.Tensor]:
    return {
        k: torch.empty(encoder_shape(k, fixture_sd, width), dtype=v.dtype, device=META) for k, v in fixture_sd.items()
    }


def meta(sd: dict, dtype=torch.float16) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, dtype=dtype, device=META) for k, v in sd.items()}


def params(sd: dict) -> int:
    return sum(v.numel() for v in sd.values())


def millions(n: int) -> float:
    return round(n / 1e6, 1)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_files(fixture_dir):
    return {
        kind: torch.load(str(fixture_dir / f"{name}.pth"), map_location="cpu", weights_only=True, mmap=True)
        for kind, name in FILES.items()
    }


@pytest.fixture(scope="module")
def official_unet():
    return diffusers_unet(SD15)


@pytest.fixture(scope="module")
def full(official_unet, tiny_files) -> dict[str, dict[str, torch.Tensor]]:
    unet = meta(official_unet.state_dict())
    motion = site_dict(official_unet, site_suffixes(tiny_files["denoising_unet"], "motion_modules"), "motion_modules")
    temporal = site_dict(
        official_unet, site_suffixes(tiny_files["temporal_module"], "temporal_modules"), "temporal_modules"
    )
    return {
        "denoising_unet": {**unet, **motion},
        "temporal_module": temporal,
        "reference_unet": {k: v for k, v in unet.items() if not k.startswith(HEAD)},
        "motion_encoder": encoder_dict(tiny_files["motion_encoder"], ENCODER_WIDTH),
        "_unet": unet,
        "_motion": motion,
    }


@pytest.fixture()
def meta_loader(monkeypatch, full):
    """load_xnemo reading the full-size meta dicts and building every module on the meta device."""
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "unet_offload_device", lambda: META)
    files = xmodel.XNeMoFiles(**{kind: f"/official/{FILES[kind]}.pth" for kind in FILES})

    def load(**replaced):
        """load_xnemo on the full-size dicts, some of them replaced (kind=state dict)."""
        sds = {**full, **replaced}
        kind_of = {f"/official/{name}.pth": kind for kind, name in FILES.items()}
        monkeypatch.setattr(ckpt, "load_state_dict_file", lambda path: dict(sds[kind_of[str(path)]]))
        with torch.device("meta"):
            return xmodel.load_xnemo(files, weight_dtype="fp16")

    return load


# ---------------------------------------------------------------------------------------------------------------
# The synthesis rule reproduces the tiny fixture exactly
# ---------------------------------------------------------------------------------------------------------------


def test_rule_reproduces_tiny_fixture(tiny_files, fixture_dir):
    import json

    config = json.loads((fixture_dir / "config.json").read_text())
    config = next(v for k, v in config.items() if k.startswith("unet2d_config"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    tiny_unet = diffusers_unet(config)

    tiny_unet_sd = tiny_unet.state_dict()
    denoising = tiny_files["denoising_unet"]
    base = {k: v for k, v in denoising.items() if not SITE.match(k)}
    assert {k: tuple(v.shape) for k, v in base.items()} == {k: tuple(v.shape) for k, v in tiny_unet_sd.items()}
    reference = tiny_files["reference_unet"]
    assert set(reference) == {k for k in tiny_unet_sd if not k.startswith(HEAD)}

    for kind, sd in (("motion_modules", denoising), ("temporal_modules", tiny_files["temporal_module"])):
        found = {k: (tuple(v.shape), v.dtype) for k, v in sd.items() if SITE.match(k)}
        built = {k: (tuple(v.shape), v.dtype) for k, v in site_dict(tiny_unet, site_suffixes(sd, kind), kind).items()}
        assert built == found, kind

    width = tiny_files["motion_encoder"]["model.att_1.transformer_blocks.0.attention_blocks.0.to_q.weight"].shape[0]
    encoder = {k: tuple(v.shape) for k, v in encoder_dict(tiny_files["motion_encoder"], width).items()}
    assert encoder == {k: tuple(v.shape) for k, v in tiny_files["motion_encoder"].items()}


# ---------------------------------------------------------------------------------------------------------------
# Official sizes (reference doc §2-3)
# ---------------------------------------------------------------------------------------------------------------


def test_full_size_counts_match_reference_doc(full, manifest):
    unet, motion = full["_unet"], full["_motion"]
    assert len(site_widths_of(full["denoising_unet"], "motion_modules")) == 21
    assert millions(params(unet)) == 859.5
    assert len(motion) == 546 and millions(params(motion)) == 372.1
    assert round(params(full["denoising_unet"]) / 1e9, 2) == 1.23
    temporal = full["temporal_module"]
    tables = {k: v for k, v in temporal.items() if k.endswith(".pos_encoder.pe")}
    assert len(temporal) == 588 and len(tables) == 42
    assert millions(params(temporal) - params(tables)) == 453.2  # parameters; the 42 pe tables are buffers
    assert round(params(temporal) * 4 / 1e9, 2) == 1.82  # the third-party file size, in float32
    assert millions(params(full["reference_unet"])) == 859.5
    assert millions(params(full["motion_encoder"])) == 61.7
    # The SD1.5 UNet has 686 tensors (the tiny fixture's 684 lacks two 1x1 shortcuts: its channels 32/32/32/64
    # change width at another level); the other two files have the fixture's tensor counts.
    assert len(unet) == 686 and len(full["reference_unet"]) == 682
    for kind in ("temporal_module", "motion_encoder"):
        assert len(full[kind]) == manifest["files"][FILES[kind] + ".pth"]["tensors"], kind


def site_widths_of(sd: dict, kind: str) -> list[str]:
    return sorted({m.group(1) + "." + m.group(3) for k in sd if (m := SITE.match(k)) and m.group(2) == kind})


# ---------------------------------------------------------------------------------------------------------------
# Our loader's validation at full size
# ---------------------------------------------------------------------------------------------------------------


def test_identify_full_size(full):
    for kind in FILES:
        assert ckpt.identify(full[kind]) == kind
        ckpt.expect_kind(full[kind], kind, FILES[kind] + ".pth")
        ckpt.check_float_dtypes(full[kind], FILES[kind] + ".pth")


def test_unet_shape_full_size(full):
    base, sites = ckpt.split_sites(full["denoising_unet"])
    assert len(sites["motion_modules"]) == 546 and not sites["temporal_modules"]
    shape = ckpt.unet_shape(base, "denoising")
    assert (shape.model_channels, shape.channel_mult, shape.num_res_blocks) == (320, (1, 2, 4, 4), 2)
    assert (shape.context_dim, shape.in_channels, shape.attention_levels) == (768, 4, (True, True, True, False))
    assert shape.has_output and not ckpt.unet_shape(full["reference_unet"], "reference").has_output


def test_unet_keys_convert_one_to_one(full, official_unet):
    """convert_unet_keys against a ComfyUI UNetModel built on meta: every key mapped, no shape differs."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    for kind in ("denoising_unet", "reference_unet"):
        sd = ckpt.split_sites(full[kind])[0]
        shape = ckpt.unet_shape(sd, kind)
        unet = UNetModel(
            **shape.comfy_config(), dtype=torch.float16, device=META, operations=comfy.ops.disable_weight_init
        )
        if not shape.has_output:
            unet.out = torch.nn.Identity()
        expected = {k: v.shape for k, v in unet.state_dict().items()}
        converted = ckpt.convert_unet_keys(sd, shape, kind, expected)
        assert len(converted) == len(sd) == len(expected)
        unet.load_state_dict(converted, strict=True, assign=True)


def test_load_xnemo_full_size(meta_loader, official_unet):
    from comfy.ldm.modules.attention import CrossAttention
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    from xnemo_pack.xnemo_core.adapters.unet_patch import site_slots

    model, bundle = meta_loader()
    unet = model.model.diffusion_model

    # Sites: 21, widths in diffusers order, 8 heads each (official motion/temporal num_attention_heads).
    site_modules = model.get_additional_models_with_key("xnemo")[0].model.sites
    widths = list(site_widths(official_unet).values())
    assert [s.motion.temporal_transformer.proj_in.in_features for s in site_modules] == widths
    for site in site_modules:
        for attn in (
            *site.motion.temporal_transformer.transformer_blocks[0].attention_blocks,
            *site.temporal.temporal_transformer.transformer_blocks[0].attention_blocks,
        ):
            assert attn.heads == 8
    # ...and each lands after a ComfyUI block of that width.
    slots = site_slots(unet)
    assert [next(m for m in block if isinstance(m, ResBlock)).out_channels for block, _ in slots] == widths

    # Spatial attention heads match diffusers' (SD1.5's attention_head_dim=8 means 8 heads).
    ours = [m.heads for m in unet.modules() if isinstance(m, CrossAttention)]
    theirs = [m.heads for n, m in official_unet.named_modules() if n.endswith((".attn1", ".attn2"))]
    assert ours and sorted(ours) == sorted(theirs) == [8] * len(theirs)
    reference_heads = [m.heads for m in bundle.reference.model.modules() if isinstance(m, CrossAttention)]
    assert reference_heads == ours

    # Motion encoder at the official width: 8 heads x 128.
    encoder = bundle.motion.model
    assert (encoder.attention_heads, encoder.attention_head_dim) == (8, 128)
    assert millions(sum(p.numel() for p in encoder.parameters())) == 61.7


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_full_size_damage_is_reported(meta_loader, full, damage):
    """The full-size path really checks: a dropped motion key or a wrong width is named in the error."""
    key = "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_k.weight"
    denoising = dict(full["denoising_unet"])
    if damage == "missing":
        del denoising[key]
    else:
        denoising[key] = torch.empty(320, 768, dtype=torch.float16, device=META)
    with pytest.raises(CheckpointError, match=rf"^xnemo_denoising_unet\.pth does not match .*{re.escape(key)}"):
        meta_loader(denoising_unet=denoising)


def test_encoder_damage_is_reported(meta_loader, full):
    encoder = dict(full["motion_encoder"])
    del encoder["model.att_3.proj_out.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: model\.att_3\.proj_out\.bias"):
        meta_loader(motion_encoder=encoder)
