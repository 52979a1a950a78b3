"""xnemo_core.adapters.checkpoint on the tiny official-format fixture: reading, telling the four files apart, key
checks with messages that name every difference, site splitting and the UNet sizes read from the tensors."""

from __future__ import annotations

import re

import pytest
import torch

from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES
from xnemo_pack.xnemo_core.pure.errors import CheckpointError

KINDS = list(CHECKPOINT_FILES)


@pytest.fixture(scope="module")
def files(fixture_dir) -> dict[str, dict[str, torch.Tensor]]:
    return {kind: ckpt.load_state_dict_file(fixture_dir / f"{name}.pth") for kind, name in CHECKPOINT_FILES.items()}


# ---------------------------------------------------------------------------------------------------------------
# identify / expect_kind
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_identify_each_fixture_file(files, kind):
    assert ckpt.identify(files[kind]) == kind


def test_identify_unknown():
    assert ckpt.identify({}) == "unknown"
    assert ckpt.identify({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}) == "unknown"
    # A plain SD UNet (output head, no X-NeMo layers) is neither the denoising nor the reference file.
    assert ckpt.identify({"conv_in.weight": torch.zeros(1), "conv_out.weight": torch.zeros(1)}) == "unknown"


def test_identify_denoising_file_with_temporal_layers_merged_in(files):
    merged = {**files["denoising_unet"], **files["temporal_module"]}
    assert ckpt.identify(merged) == "denoising_unet"  # load_xnemo then refuses it explicitly


@pytest.mark.parametrize("given", KINDS)
@pytest.mark.parametrize("actual", KINDS)
def test_expect_kind_names_the_files(files, given, actual):
    name = f"picked_{actual}.pth"
    if given == actual:
        ckpt.expect_kind(files[actual], given, name)
        return
    with pytest.raises(CheckpointError) as info:
        ckpt.expect_kind(files[actual], given, name)
    message = str(info.value)
    assert message.startswith(f"{name} was given as the {given.replace('_', ' ')} ")
    assert f"it looks like {CHECKPOINT_FILES[actual]}" in message
    assert f"Pick {CHECKPOINT_FILES[given]}.pth" in message


def test_expect_kind_on_a_foreign_file():
    with pytest.raises(
        CheckpointError,
        match=r"^model\.ckpt was given as the motion encoder but it is not an X-NeMo "
        r"file\. Pick xnemo_motion_encoder\.pth",
    ):
        ckpt.expect_kind({"foo.weight": torch.zeros(1)}, "motion_encoder", "model.ckpt")


# ---------------------------------------------------------------------------------------------------------------
# check_keys / check_float_dtypes
# ---------------------------------------------------------------------------------------------------------------


def test_check_keys_accepts_an_exact_match():
    ckpt.check_keys(
        {"a": torch.Size([2, 3]), "b": torch.Size([])}, {"a": torch.zeros(2, 3), "b": torch.tensor(1.0)}, "f.pth"
    )


def test_check_keys_lists_missing_unexpected_and_shapes():
    expected = {"a.weight": torch.Size([4, 4]), "b.weight": torch.Size([4]), "c.bias": torch.Size([8])}
    found = {"a.weight": torch.zeros(4, 2), "c.bias": torch.zeros(8), "z.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        ckpt.check_keys(expected, found, "xnemo_reference_unet.pth")
    message = str(info.value)
    assert message.startswith("xnemo_reference_unet.pth does not match the X-NeMo architecture (")
    assert "1 missing: b.weight" in message
    assert "1 unexpected: z.extra" in message
    assert "1 with another shape: a.weight expected (4, 4) found (4, 2)" in message
    assert "c.bias" not in message


def test_check_keys_shortens_long_listings():
    expected = {f"k{i:02d}": torch.Size([1]) for i in range(20)}
    with pytest.raises(CheckpointError) as info:
        ckpt.check_keys(expected, {}, "f.pth")
    message = str(info.value)
    assert "20 missing: k00, k01" in message and "k11, ... (8 more)" in message and "k12" not in message


def test_check_float_dtypes():
    ckpt.check_float_dtypes(
        {"w": torch.zeros(1, dtype=torch.float16), "bn.num_batches_tracked": torch.tensor(3)}, "f.pth"
    )
    with pytest.raises(CheckpointError, match=r"f\.pth stores weights as torch\.int8 \(w\)"):
        ckpt.check_float_dtypes({"w": torch.zeros(1, dtype=torch.int8)}, "f.pth")


def test_fixture_files_pass_dtype_check(files):
    for kind, sd in files.items():
        ckpt.check_float_dtypes(sd, kind)


# ---------------------------------------------------------------------------------------------------------------
# split_sites / unet_shape / site_prefixes
# ---------------------------------------------------------------------------------------------------------------


def test_split_sites_denoising(files):
    sd = files["denoising_unet"]
    base, sites = ckpt.split_sites(sd)
    assert set(sites) == {"motion_modules", "temporal_modules"}
    assert len(sites["motion_modules"]) == 546 and not sites["temporal_modules"]
    assert len(base) == len(sd) - 546 and "conv_in.weight" in base
    assert not [k for k in base if "_modules." in k]
    assert all(sites["motion_modules"][k] is sd[k] for k in sites["motion_modules"])  # no copies, keys unchanged


def test_split_sites_temporal(files):
    base, sites = ckpt.split_sites(files["temporal_module"])
    assert not base and not sites["motion_modules"] and len(sites["temporal_modules"]) == 588


def test_split_sites_leaves_look_alikes_in_the_base():
    sd = {
        "down_blocks.0.motion_modules.x.w": torch.zeros(1),
        "foo.motion_modules.0.w": torch.zeros(1),
        "mid_block.temporal_modules.0.w": torch.zeros(1),
    }
    base, sites = ckpt.split_sites(sd)
    assert set(base) == {"down_blocks.0.motion_modules.x.w", "foo.motion_modules.0.w"}
    assert set(sites["temporal_modules"]) == {"mid_block.temporal_modules.0.w"}


def test_unet_shape_tiny(files):
    base, _ = ckpt.split_sites(files["denoising_unet"])
    shape = ckpt.unet_shape(base, "xnemo_denoising_unet.pth")
    assert shape == ckpt.UNetShape(
        model_channels=32,
        channel_mult=(1, 1, 1, 2),
        num_res_blocks=2,
        context_dim=768,
        in_channels=4,
        attention_levels=(True, True, True, False),
        has_output=True,
    )
    reference = ckpt.unet_shape(files["reference_unet"], "xnemo_reference_unet.pth")
    assert reference == ckpt.UNetShape(
        model_channels=32,
        channel_mult=(1, 1, 1, 2),
        num_res_blocks=2,
        context_dim=768,
        in_channels=4,
        attention_levels=(True, True, True, False),
        has_output=False,
    )


def test_unet_shape_names_the_file_and_key(files):
    sd = dict(files["reference_unet"])
    del sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    with pytest.raises(
        CheckpointError,
        match=r"^ref\.pth is not an SD1\.5-style UNet: key "
        r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k",
    ):
        ckpt.unet_shape(sd, "ref.pth")


def test_site_prefixes_match_the_fixture_files(files):
    shape = ckpt.unet_shape(files["reference_unet"], "ref")
    prefixes = ckpt.site_prefixes(shape)
    assert len(prefixes) == 21
    assert prefixes[:2] == ["down_blocks.0.{kind}.0", "down_blocks.0.{kind}.1"]
    assert prefixes[8] == "mid_block.{kind}.0" and prefixes[-1] == "up_blocks.3.{kind}.2"
    for kind, file in (("motion_modules", "denoising_unet"), ("temporal_modules", "temporal_module")):
        in_file = {
            m.group(1) + "." + m.group(2) + "." + m.group(3) for k in files[file] if (m := ckpt.SITE_KEY.match(k))
        }
        assert in_file == {p.format(kind=kind) for p in prefixes}


def test_convert_unet_keys_tiny(files):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd = files["reference_unet"]
    shape = ckpt.unet_shape(sd, "ref.pth")
    with torch.device("meta"):
        unet = UNetModel(**shape.comfy_config(), operations=comfy.ops.disable_weight_init)
    unet.out = torch.nn.Identity()
    expected = {k: v.shape for k, v in unet.state_dict().items()}
    converted = ckpt.convert_unet_keys(sd, shape, "ref.pth", expected)
    assert set(converted) == set(expected) and len(converted) == len(sd)

    with pytest.raises(
        CheckpointError,
        match=r"^ref\.pth has 1 keys that are not part of an SD1\.5-style UNet: "
        r"lora\.weight",
    ):
        ckpt.convert_unet_keys({**sd, "lora.weight": torch.zeros(1)}, shape, "ref.pth", expected)


# ---------------------------------------------------------------------------------------------------------------
# load_state_dict_file
# ---------------------------------------------------------------------------------------------------------------


def test_load_unwraps_and_strips_module_prefix(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module.a.weight": torch.ones(2)}}, path)
    assert list(ckpt.load_state_dict_file(path)) == ["a.weight"]


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "not_a_dict", "non_tensor"])
def test_load_errors_name_the_file(tmp_path, fixture_dir, case):
    path = tmp_path / "xnemo_temporal_module.pth"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes((fixture_dir / path.name).read_bytes()[:5000])
    elif case == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    elif case == "non_tensor":
        torch.save({"a": torch.zeros(1), "step": 3}, path)
    with pytest.raises(CheckpointError, match=re.escape(path.name)):
        ckpt.load_state_dict_file(path)
