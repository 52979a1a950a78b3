"""The VAE on ComfyUI's own VAE class: the official SVD temporal VAE from the files users have, checks that refuse a
VAE X-NeMo cannot use, the reference latent, and the official fixed-chunk decode.

The official decodes with the SVD temporal decoder in fixed chunks of `decode_chunk_size` frames (25), each chunk
one clip for the temporal layers (`decode_latents_svd`). Core VAE Decode instead sizes its chunks from free memory,
so with the temporal decoder the same latents decode differently on two machines. `decode_frames` fixes the chunks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator

import comfy.model_management as mm
import comfy.sd
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.model import Decoder
from comfy.ldm.modules.temporal_ae import VideoDecoder

from ..pure import svd_vae_keys
from ..pure.constants import DECODE_CHUNK_SIZE, LATENT_SCALE
from ..pure.errors import IncompatibleModelError

Progress = Callable[[int, int], None]

CONVERT_HINT = (
    "load it with X-NeMo Load VAE, or convert it once with `python scripts/convert_svd_vae.py FILE` and "
    "load the result with Load VAE"
)
TEMPORAL = "temporal"  # SVD temporal decoder: frames of a chunk are decoded together
IMAGE = "image"  # per-frame decoder (an SD1.5-family VAE: the documented non-official alternative)

_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unloaded_parameters(module: torch.nn.Module) -> list[str]:
    """Names of weights that look never loaded: ComfyUI builds modules without initialising them and only logs
    missing keys, so a tensor that is all zeros or not finite is one no file filled."""
    return [
        name
        for name, t in module.state_dict().items()
        if t.numel() > 1 and t.is_floating_point() and (not t.any() or not torch.isfinite(t).all())
    ]


def vae_kind(vae) -> str:
    """Check that X-NeMo can use `vae` (8x downscale, 4 latent channels, every weight loaded); TEMPORAL or IMAGE."""
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        raise IncompatibleModelError(
            "the VAE holds no weights (ComfyUI found none in the file): load the Stable Video "
            "Diffusion VAE (see the README, 'Where the weights go')"
        )
    if model in _checked:
        return _checked[model]
    decoder = getattr(model, "decoder", None)
    unloaded = unloaded_parameters(model)
    downscale = vae.spacial_compression_encode()
    if downscale == 4 and unloaded and type(decoder) is Decoder:
        raise IncompatibleModelError(
            "this VAE is the diffusers Stable Video Diffusion file (vae/diffusion_pytorch_model.*) loaded with core "
            "Load VAE: ComfyUI 0.3.75 misreads it as a 4x upscaler VAE with almost every weight missing. "
            + CONVERT_HINT
        )
    if downscale != 8 or vae.latent_channels != 4 or getattr(vae, "latent_dim", 2) != 2:
        # ComfyUI builds unloaded weights with torch.empty: reused memory is not always zeros, so the misread
        # diffusers file can pass the check above; a plain 4x Decoder gets the hint too.
        misread = downscale == 4 and type(decoder) is Decoder
        raise IncompatibleModelError(
            f"the VAE downscales {downscale}x into {vae.latent_channels} latent channels; X-NeMo's UNet works on "
            f"8x-downscaled 4-channel image latents: use the Stable Video Diffusion VAE (official) or an SD1.5 VAE"
            + (
                ". If this is the diffusers Stable Video Diffusion file (vae/diffusion_pytorch_model.*) loaded with "
                "core Load VAE, which misreads it as a 4x VAE, " + CONVERT_HINT
                if misread
                else ""
            )
        )
    if unloaded:
        raise IncompatibleModelError(
            f"ComfyUI loaded this VAE with missing keys ({len(unloaded)} weights never filled, e.g. "
            f"{', '.join(unloaded[:3])}; the console shows 'Missing VAE keys'): the file is incomplete or not in a "
            f"layout Load VAE knows. For the diffusers Stable Video Diffusion file, " + CONVERT_HINT
        )
    kind = TEMPORAL if isinstance(decoder, VideoDecoder) else IMAGE
    _checked[model] = kind
    return kind


def load_vae_file(path: str) -> comfy.sd.VAE:
    """Any VAE file core Load VAE reads, plus the diffusers SVD VAE and a whole SVD checkpoint's VAE part.

    The SVD layouts are checked key by key: every tensor the temporal VAE needs must come from the file."""
    sd = svd_vae_keys.strip_checkpoint_prefix(comfy.utils.load_torch_file(path, safe_load=True))
    if svd_vae_keys.is_diffusers_svd(sd):
        try:
            sd = svd_vae_keys.diffusers_to_comfy(sd)
        except svd_vae_keys.SVDVaeKeyError as e:
            raise IncompatibleModelError(f"{path}: {e}") from None
    strict = svd_vae_keys.is_comfy_svd(sd)
    names = set(sd)
    vae = comfy.sd.VAE(sd=sd)
    if strict:
        expected = set(vae.first_stage_model.state_dict())
        missing, unexpected = sorted(expected - names), sorted(names - expected)
        if missing or unexpected:
            raise IncompatibleModelError(
                f"{path} is an incomplete Stable Video Diffusion VAE: missing {missing[:5]} ({len(missing)}), "
                f"unexpected {unexpected[:5]} ({len(unexpected)}); download the whole file again"
            )
    vae_kind(vae)
    return vae


@torch.no_grad()  # ComfyUI runs nodes in inference mode; direct callers (tests, scripts) would keep the graph
def encode_reference(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The official reference latent of IMAGE `pixels` [1, H, W, 3] (the official crop at the output size): the
    latent distribution's mean x 0.18215, [1, 4, H/8, W/8] float32 on the CPU."""
    vae_kind(vae)
    latent = vae.encode(pixels).float().cpu()  # ComfyUI: 2x-1, encoder, the distribution's mode (= its mean)
    return latent * LATENT_SCALE


def decode_frames(
    vae, samples: torch.Tensor, chunk_size: int = DECODE_CHUNK_SIZE, progress: Progress | None = None
) -> torch.Tensor:
    """LATENT samples [F, 4, h, w] -> IMAGE [F, 8h, 8w, 3], decoded `chunk_size` frames at a time.

    With the SVD temporal decoder each chunk is one clip (its temporal layers mix frames within the chunk only), as
    the official `decode_latents_svd`: the result depends on the chunk size, never on free memory. Memory is that of
    one chunk. Frames are written into a preallocated output on ComfyUI's intermediate device."""
    out = None
    for start, pixels in decoded_chunks(vae, samples, chunk_size, progress):
        if out is None:
            out = torch.empty((samples.shape[0], *pixels.shape[1:]), device=vae.output_device)
        out[start : start + pixels.shape[0]] = pixels
        del pixels
    return out


def decoded_chunks(
    vae, samples: torch.Tensor, chunk_size: int = DECODE_CHUNK_SIZE, progress: Progress | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """The official fixed-chunk decode one chunk at a time: (first frame, IMAGE [n, 8h, 8w, 3]) per chunk.

    What `decode_frames` assembles and the streaming Save Video encodes as it goes; the inputs are checked before
    the first chunk is asked for. Nothing of a chunk is kept once the caller drops it."""
    vae_kind(vae)
    if samples.ndim != 4 or samples.shape[1] != vae.latent_channels:
        raise IncompatibleModelError(
            f"latent of shape {tuple(samples.shape)}: X-NeMo VAE Decode takes frames as a "
            f"batch [frames, 4, h, w], the LATENT of X-NeMo Sample Animation"
        )
    if chunk_size < 1:
        raise IncompatibleModelError(f"decode_chunk_size is {chunk_size}: it must be at least 1 (official 25)")
    return _decode_chunks(vae, samples, chunk_size, progress)


def _decode_chunks(vae, samples: torch.Tensor, chunk_size: int, progress: Progress | None):
    frames = samples.shape[0]
    chunk = min(chunk_size, frames)
    per_frame = vae.memory_used_decode(samples[:1].shape, vae.vae_dtype)
    mm.load_models_gpu([vae.patcher], memory_required=per_frame * chunk, force_full_load=vae.disable_offload)
    starts = range(0, frames, chunk)
    for done, start in enumerate(starts, 1):
        mm.throw_exception_if_processing_interrupted()
        with torch.no_grad():
            z = samples[start : start + chunk].to(device=vae.device, dtype=vae.vae_dtype)
            pixels = vae.process_output(vae.first_stage_model.decode(z).to(vae.output_device).float())
            del z
        yield start, pixels.movedim(1, -1)
        del pixels
        if progress is not None:
            progress(done, len(starts))
