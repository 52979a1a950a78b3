"""X-NeMo VAE Decode, the VAE and CLIP checks, and the SVD key mapping against ComfyUI's own temporal VAE.

Tiny VAEs with ComfyUI's real classes (Encoder + temporal_ae.VideoDecoder, 32 channels) keep these fast; the full-size
official VAE and CLIP are checked against the official goldens in tests/parity/test_e2e_parity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import pytest
import torch
from comfy.clip_model import CLIPVisionModelProjection
from comfy.ldm.models.autoencoder import AutoencodingEngine

from xnemo_pack.nodes.vae import XNeMoVAEDecode
from xnemo_pack.xnemo_core.adapters import clip as clip_adapter
from xnemo_pack.xnemo_core.adapters import vae as vae_adapter
from xnemo_pack.xnemo_core.pure import svd_vae_keys
from xnemo_pack.xnemo_core.pure.errors import IncompatibleModelError

SHAPES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "xnemo_e2e" / "state_dict_shapes.json"
SVD_CONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def engine(ch: int = 32, ch_mult=(1, 1, 1, 1), temporal: bool = True) -> AutoencodingEngine:
    config = {**SVD_CONFIG, "ch": ch, "ch_mult": list(ch_mult)}
    decoder = {**config, "video_kernel_size": [3, 1, 1], "alpha": 0.0} if temporal else config
    target = (
        "comfy.ldm.modules.temporal_ae.VideoDecoder" if temporal else "comfy.ldm.modules.diffusionmodules.model.Decoder"
    )
    return AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": config},
        decoder_config={"target": target, "params": decoder},
    )


def tiny_vae(temporal: bool = True, ch_mult=(1, 1, 1, 1), fill: bool = True) -> comfy.sd.VAE:
    """A comfy.sd.VAE around a 32-channel engine (what VAE.__init__ sets up, without a file)."""
    vae = comfy.sd.VAE(sd={})  # no weights: ComfyUI leaves first_stage_model None and returns early
    model = engine(ch_mult=ch_mult, temporal=temporal).eval()
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if not fill:
                p.zero_()
            elif p.ndim == 1 and "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim == 1 else p[0].numel() ** -0.5))
    vae.first_stage_model = model
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(ch_mult) - 1)
    vae.device = vae.output_device = torch.device("cpu")
    vae.vae_dtype = torch.float32
    vae.patcher = comfy.model_patcher.ModelPatcher(model, load_device=vae.device, offload_device=vae.device)
    return vae


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def latents(frames: int) -> torch.Tensor:
    return torch.randn(frames, 4, 2, 2, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------------------------------
# Decode


def test_decode_runs_fixed_chunks_each_one_clip(vae):
    z = latents(7)
    out = vae_adapter.decode_frames(vae, z, chunk_size=3)
    with torch.no_grad():
        by_hand = torch.cat([vae.process_output(vae.first_stage_model.decode(z[s : s + 3])) for s in (0, 3, 6)])
    assert out.shape == (7, 16, 16, 3)
    assert torch.equal(out, by_hand.movedim(1, -1))
    whole = vae_adapter.decode_frames(vae, z, chunk_size=7)
    assert (whole - out).abs().max() > 1e-3, "the temporal decoder mixes the frames of a chunk"


def test_decode_does_not_depend_on_free_memory(vae, monkeypatch):
    z = latents(7)
    roomy = vae_adapter.decode_frames(vae, z, chunk_size=7)
    core_roomy = vae.decode(z)
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *a, **k: 1)
    assert torch.equal(vae_adapter.decode_frames(vae, z, chunk_size=7), roomy)
    # Core VAE Decode sizes its chunks from free memory: here one frame per chunk, so another result.
    assert (vae.decode(z) - core_roomy).abs().max() > 1e-3


def test_decode_node_ticks_once_per_chunk(vae, monkeypatch):
    ticks = []
    real = vae_adapter.decode_frames

    def spy(v, samples, chunk, progress=None):
        def both(done, total):
            ticks.append((done, total))
            progress(done, total)

        return real(v, samples, chunk, progress=both)

    monkeypatch.setattr(vae_adapter, "decode_frames", spy)
    images = XNeMoVAEDecode.execute({"samples": latents(7)}, vae, 3).args[0]
    assert images.shape == (7, 16, 16, 3) and ticks == [(1, 3), (2, 3), (3, 3)]


def test_decode_refuses_bad_latents_and_chunks(vae):
    with pytest.raises(IncompatibleModelError, match="frames as a batch"):
        vae_adapter.decode_frames(vae, torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(IncompatibleModelError, match="at least 1"):
        vae_adapter.decode_frames(vae, latents(2), chunk_size=0)


# ----------------------------------------------------------------------------------------------------------------------
# VAE checks


def test_vae_kinds(vae):
    assert vae_adapter.vae_kind(vae) == vae_adapter.TEMPORAL
    assert vae_adapter.vae_kind(tiny_vae(temporal=False)) == vae_adapter.IMAGE


def test_refuses_a_vae_that_is_not_8x_4_channels():
    other = tiny_vae(temporal=False, ch_mult=(1, 1, 1))
    with pytest.raises(IncompatibleModelError, match="downscales 4x.*8x-downscaled 4-channel"):
        vae_adapter.vae_kind(other)
    empty = comfy.sd.VAE(sd={})
    with pytest.raises(IncompatibleModelError, match="holds no weights"):
        vae_adapter.vae_kind(empty)


def test_refuses_a_vae_loaded_with_missing_keys():
    with pytest.raises(IncompatibleModelError, match="missing keys"):
        vae_adapter.vae_kind(tiny_vae(fill=False))


def test_refuses_the_diffusers_svd_file_misread_by_core_load_vae():
    # What core Load VAE builds from the diffusers SVD names: a plain 4x Decoder with almost every weight missing.
    misread = tiny_vae(temporal=False, ch_mult=(1, 1, 1), fill=False)
    with pytest.raises(
        IncompatibleModelError, match="diffusers Stable Video Diffusion file.*X-NeMo Load VAE.*convert_svd_vae.py"
    ):
        vae_adapter.vae_kind(misread)


# ----------------------------------------------------------------------------------------------------------------------
# Key mapping against ComfyUI's own SVD VAE


def svd_shapes() -> dict[str, list[int]]:
    if not SHAPES.is_file():
        pytest.fail(f"{SHAPES} not found: put ../shared beside the repo")
    return {k: v["shape"] for k, v in json.loads(SHAPES.read_text())["vae"].items()}


def test_every_diffusers_key_maps_onto_comfyuis_temporal_vae():
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in engine(ch=128, ch_mult=(1, 2, 4, 4)).state_dict().items()}
    shapes = svd_shapes()
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    sd.update({"quant_conv.weight": torch.eye(8).reshape(8, 8, 1, 1), "quant_conv.bias": torch.zeros(8)})  # identity
    mapped = svd_vae_keys.diffusers_to_comfy(sd)
    assert mapped.keys() == expected.keys()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected


# ----------------------------------------------------------------------------------------------------------------------
# CLIP check


class FakeClipVision:
    def __init__(self, model, image_size=224, mean=clip_adapter.CLIP_MEAN, std=clip_adapter.CLIP_STD):
        self.model, self.image_size, self.image_mean, self.image_std = model, image_size, mean, std


def clip_config(**changes) -> dict:
    config = {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "quick_gelu",
        "model_type": "clip_vision_model",
        "num_channels": 3,
        "patch_size": 14,
        "image_size": 224,
        "projection_dim": 768,
        "layer_norm_eps": 1e-5,
    }
    return {**config, **changes}


def meta_clip(**changes) -> CLIPVisionModelProjection:
    with torch.device("meta"):
        return CLIPVisionModelProjection(clip_config(**changes), None, None, comfy.ops.manual_cast)


def test_clip_vit_l14_passes():
    clip_adapter.check_clip_vision(FakeClipVision(meta_clip()))


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_size": 1280, "num_hidden_layers": 32, "projection_dim": 1024},  # ViT-H
        {"image_size": 336},
        {"projection_dim": 512},
    ],
)
def test_other_image_encoders_are_refused(changes):
    size = changes.get("image_size", 224)
    with pytest.raises(IncompatibleModelError, match="not CLIP ViT-L/14.*Load CLIP Vision"):
        clip_adapter.check_clip_vision(FakeClipVision(meta_clip(**changes), image_size=size))


def test_a_non_clip_encoder_and_other_normalisation_are_refused():
    with pytest.raises(IncompatibleModelError, match="Dinov2Model"):
        clip_adapter.check_clip_vision(FakeClipVision(type("Dinov2Model", (torch.nn.Module,), {})()))
    with pytest.raises(IncompatibleModelError, match="normalises"):
        clip_adapter.check_clip_vision(FakeClipVision(meta_clip(), mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))
