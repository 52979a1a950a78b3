"""scripts/convert_svd_vae.py and pure/svd_vae_keys: the diffusers SVD VAE renamed to ComfyUI's temporal layout.

Small tensors under the full set of real key names (from the end-to-end set's state_dict_shapes.json); the mapping
against ComfyUI's own module is checked in tests/comfy/test_vae_clip.py, values against the official goldens in
tests/parity/test_e2e_parity.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xnemo_pack.xnemo_core.pure import svd_vae_keys

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT.parent / "shared" / "fixtures" / "xnemo_e2e" / "state_dict_shapes.json"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("convert_svd_vae", ROOT / "scripts" / "convert_svd_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_svd_state_dict(quant_identity: bool = False) -> dict[str, torch.Tensor]:
    """Every key of the diffusers SVD VAE, tiny tensors of the right rank (attention weights 2-D, as diffusers)."""
    if not SHAPES.is_file():
        pytest.fail(f"{SHAPES} not found: put ../shared beside the repo")
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, info in json.loads(SHAPES.read_text())["vae"].items():
        shape = [min(s, 3) for s in info["shape"]]
        sd[key] = torch.randn(shape, generator=g).to(torch.float16)
    sd["encoder.conv_out.weight"] = torch.randn(8, 3, 3, 3, generator=g).to(torch.float16)
    sd["encoder.conv_out.bias"] = torch.randn(8, generator=g).to(torch.float16)
    sd["quant_conv.weight"] = (torch.eye(8) if quant_identity else torch.randn(8, 8, generator=g)).reshape(8, 8, 1, 1)
    sd["quant_conv.bias"] = torch.zeros(8) if quant_identity else torch.randn(8, generator=g)
    return sd


def test_names_map_one_to_one_without_touching_values():
    sd = small_svd_state_dict(quant_identity=True)
    out = svd_vae_keys.diffusers_to_comfy(sd)
    assert svd_vae_keys.is_comfy_svd(out) and not svd_vae_keys.is_diffusers_svd(out)
    assert len(out) == len(sd) - 2  # quant_conv folded away
    assert out["decoder.mid.block_1.mix_factor"] is sd["decoder.mid_block.resnets.0.time_mixer.mix_factor"]
    assert (
        out["decoder.up.3.block.0.time_stack.in_layers.2.weight"]
        is sd["decoder.up_blocks.0.resnets.0.temporal_res_block.conv1.weight"]
    )
    assert out["decoder.conv_out.time_mix_conv.weight"] is sd["decoder.time_conv_out.weight"]
    assert out["encoder.mid.attn_1.q.weight"].shape == (*sd["encoder.mid_block.attentions.0.to_q.weight"].shape, 1, 1)
    assert out["encoder.conv_out.weight"] is sd["encoder.conv_out.weight"]  # identity quant_conv: untouched


def test_quant_conv_is_folded_exactly():
    sd = small_svd_state_dict()
    out = svd_vae_keys.diffusers_to_comfy(sd)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    conv2d = torch.nn.functional.conv2d
    conv = conv2d(x, sd["encoder.conv_out.weight"].double(), sd["encoder.conv_out.bias"].double())
    two_steps = conv2d(conv, sd["quant_conv.weight"].double(), sd["quant_conv.bias"].double())
    folded = conv2d(x, out["encoder.conv_out.weight"].double(), out["encoder.conv_out.bias"].double())
    assert out["encoder.conv_out.weight"].dtype == torch.float32  # not rounded back to the file's float16
    assert (folded - two_steps).abs().max() < 1e-5


def test_unknown_keys_are_refused():
    sd = small_svd_state_dict()
    sd["decoder.extra_block.weight"] = torch.zeros(1)
    with pytest.raises(svd_vae_keys.SVDVaeKeyError, match="decoder.extra_block.weight"):
        svd_vae_keys.diffusers_to_comfy(sd)


def test_checkpoint_prefix_is_stripped():
    sd = {"first_stage_model.decoder.conv_in.weight": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)}
    assert list(svd_vae_keys.strip_checkpoint_prefix(sd)) == ["decoder.conv_in.weight"]
    plain = {"decoder.conv_in.weight": torch.zeros(1)}
    assert svd_vae_keys.strip_checkpoint_prefix(plain) is plain


def test_script_converts_reads_back_and_never_overwrites(script, tmp_path):
    sd = small_svd_state_dict()
    source = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(sd, str(source))
    assert script.main([str(source)]) == 0
    target = tmp_path / "diffusion_pytorch_model_comfyui.safetensors"
    written = load_file(str(target))
    expected = svd_vae_keys.diffusers_to_comfy(sd)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in written)
    before = target.stat().st_mtime_ns
    assert script.main([str(source)]) == 1  # exists: kept
    assert target.stat().st_mtime_ns == before
    assert script.main([str(source), "--force"]) == 0
    assert script.main([str(target), "--out", str(tmp_path / "again.safetensors")]) == 1  # already converted


def test_script_reads_bin_safely_and_refuses_other_files(script, tmp_path):
    sd = small_svd_state_dict()
    torch.save(sd, tmp_path / "diffusion_pytorch_model.bin")
    assert script.main([str(tmp_path / "diffusion_pytorch_model.bin"), "--out", str(tmp_path / "a.safetensors")]) == 0
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "sd15.safetensors"))
    assert script.main([str(tmp_path / "sd15.safetensors")]) == 1
    (tmp_path / "evil.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")
    assert script.main([str(tmp_path / "evil.bin")]) == 1
    assert script.main([str(tmp_path / "missing.safetensors")]) == 1
