"""X-NeMo Load VAE (the official SVD VAE from the diffusers file) and X-NeMo VAE Decode (official fixed chunks)."""

from __future__ import annotations

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..xnemo_core.adapters import vae as xvae
from ..xnemo_core.pure.constants import DECODE_CHUNK_SIZE
from .types import CATEGORY

MAX_CHUNK = 4096


class XNeMoVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoVAELoader",
            display_name="X-NeMo Load VAE",
            category=CATEGORY,
            description="Load a VAE from models/vae, including the file the official X-NeMo uses: the diffusers "
            "Stable Video Diffusion VAE (vae/diffusion_pytorch_model.safetensors of "
            "stable-video-diffusion-img2vid-xt), which core Load VAE misreads. It becomes ComfyUI's own "
            "temporal-decoder VAE, checked key by key. Other VAE files load as in core Load VAE.",
            inputs=[
                io.Combo.Input(
                    "vae_name",
                    options=folder_paths.get_filename_list("vae"),
                    tooltip="A file in ComfyUI/models/vae/: the diffusers SVD VAE (official), a converted "
                    "or Stability-format SVD VAE, a whole svd/svd_xt checkpoint, or an SD1.5 VAE.",
                ),
            ],
            outputs=[
                io.Vae.Output(
                    display_name="VAE",
                    tooltip="For X-NeMo Reference Condition and X-NeMo VAE Decode (and any core VAE node).",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, vae_name: str | None = None) -> bool | str:
        # Named: ComfyUI 0.3.75 does not compare V3 dropdown values with their options (see nodes/checks.py).
        if vae_name is not None and folder_paths.get_full_path("vae", vae_name) is None:
            return (
                f"vae_name: {vae_name} is not in models/vae/. Put the Stable Video Diffusion VAE there "
                f"(see the README, 'Where the weights go') and refresh."
            )
        return True

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        return io.NodeOutput(xvae.load_vae_file(folder_paths.get_full_path_or_raise("vae", vae_name)))


def latent_and_vae_inputs() -> list:
    """The LATENT and VAE inputs of the nodes that decode Sample Animation's frames (VAE Decode, Save Video)."""
    return [
        io.Latent.Input("samples", tooltip="Frames from X-NeMo Sample Animation."),
        io.Vae.Input(
            "vae",
            tooltip="The VAE given to X-NeMo Reference Condition (official: the Stable Video Diffusion VAE, from "
            "X-NeMo Load VAE).",
        ),
    ]


def decode_chunk_input(tooltip: str):
    """decode_chunk_size: the official fixed chunks (25 frames), the same limits wherever frames are decoded."""
    return io.Int.Input("decode_chunk_size", default=DECODE_CHUNK_SIZE, min=1, max=MAX_CHUNK, tooltip=tooltip)


class XNeMoVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoVAEDecode",
            display_name="X-NeMo VAE Decode",
            category=CATEGORY,
            description="Decode X-NeMo frames as the official does: the SVD temporal decoder over fixed chunks of "
            "decode_chunk_size frames, each chunk one clip, so the result never depends on free memory "
            "(core VAE Decode picks its chunks from free memory, and the temporal decoder mixes frames "
            "within a chunk). Memory is that of one chunk; the progress bar advances per chunk.",
            inputs=[
                *latent_and_vae_inputs(),
                decode_chunk_input(
                    "Frames decoded together (official 25). The temporal decoder smooths across the frames of a "
                    "chunk, so other values change the pixels; lower it only when a chunk does not fit in memory. No "
                    "effect on the result with an SD1.5 VAE."
                ),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="Decoded frames.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae, decode_chunk_size: int) -> io.NodeOutput:
        latent: torch.Tensor = samples["samples"]
        chunks = -(-latent.shape[0] // max(decode_chunk_size, 1))
        bar = comfy.utils.ProgressBar(chunks)
        images = xvae.decode_frames(
            vae, latent, decode_chunk_size, progress=lambda done, total: bar.update_absolute(done, total)
        )
        return io.NodeOutput(images)


NODES = [XNeMoVAELoader, XNeMoVAEDecode]
