"""X-NeMo Save Video (streaming): LATENT -> decode -> paste back -> MP4, one chunk at a time, for long clips."""

from __future__ import annotations

import os

import comfy.utils
import folder_paths
import torch
from comfy.cli_args import args
from comfy_api.latest import InputImpl, io, ui

from ..xnemo_core.adapters import video_out
from ..xnemo_core.pure.compose import PasteBack
from ..xnemo_core.pure.payloads import CropInfo
from .paste_back import color_match_input, feather_input
from .types import CATEGORY, XNeMoCrop
from .vae import decode_chunk_input, latent_and_vae_inputs


class XNeMoSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoSaveVideo",
            display_name="X-NeMo Save Video (streaming)",
            category=CATEGORY,
            description="Write the animation straight from the LATENT to an MP4 in ComfyUI's output folder: each "
            "chunk of frames is decoded (the official fixed chunks), pasted back into the original picture and "
            "encoded before the next one, so memory stays that of one chunk however long the clip. Replaces "
            "X-NeMo VAE Decode -> Paste Back -> Create Video -> Save Video, with the same frames.",
            inputs=[
                *latent_and_vae_inputs(),
                io.Float.Input(
                    "fps",
                    default=25.0,
                    min=0.01,
                    max=1000.0,
                    step=0.01,
                    tooltip="Frame rate of the video. Connect Get Video Components' fps so the animation keeps "
                    "the driving video's timing.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="xnemo/video",
                    tooltip="File name start, relative to ComfyUI's output folder; a counter and .mp4 are added.",
                ),
                decode_chunk_input(
                    "Frames decoded together (official 25), as in X-NeMo VAE Decode: the temporal decoder smooths "
                    "across a chunk, so other values change the pixels. Memory grows with it, not with the clip."
                ),
                io.Audio.Input(
                    "audio",
                    optional=True,
                    tooltip="Sound for the video, cut to its length: Get Video Components' audio of the driving video.",
                ),
                XNeMoCrop.Input(
                    "crop",
                    optional=True,
                    tooltip="Crop info from X-NeMo Reference Condition. With original connected, each frame "
                    "is pasted back into it (as X-NeMo Paste Back); leave both unconnected to save the crop.",
                ),
                io.Image.Input(
                    "original",
                    optional=True,
                    tooltip="The uncropped picture given to X-NeMo Reference Condition (one image, or one "
                    "per frame); the video then has its size.",
                ),
                feather_input(
                    "Paste back: soft-edge width as a fraction of the crop size (as in X-NeMo Paste Back). Raise it "
                    "if the crop's edge shows; 0 gives a hard edge.",
                    optional=True,
                ),
                color_match_input(
                    "Paste back: match the crop's colour to the original's inside the crop box (as in X-NeMo Paste "
                    "Back). Needs every frame's colours first, so the clip is decoded twice.",
                    optional=True,
                ),
            ],
            outputs=[
                io.Video.Output(
                    "video",
                    display_name="video",
                    tooltip="The saved file as a VIDEO (read from disk when used, never held in memory).",
                )
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
            is_experimental=True,
        )

    @classmethod
    def execute(
        cls,
        samples: dict,
        vae,
        fps: float,
        filename_prefix: str,
        decode_chunk_size: int,
        audio: dict | None = None,
        crop: CropInfo | None = None,
        original: torch.Tensor | None = None,
        feather: float = 0.1,
        color_match: bool = False,
    ) -> io.NodeOutput:
        latent: torch.Tensor = samples["samples"]
        paste = None
        if (crop is None) != (original is None):
            raise ValueError(
                "connect both crop (Reference Condition's crop info) and original (the picture given to "
                "Reference Condition) to paste back, or neither to save the animated crop"
            )
        if crop is not None:
            if not isinstance(crop, CropInfo):
                raise ValueError(f"crop must come from X-NeMo Reference Condition, got {type(crop).__name__}")
            paste = PasteBack(crop, original, feather=feather, frames=latent.shape[0])

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        file_name = f"{name}_{counter:05}_.mp4"
        path = os.path.join(folder, file_name)
        passes = 2 if paste is not None and color_match else 1
        bar = comfy.utils.ProgressBar(passes * -(-latent.shape[0] // max(decode_chunk_size, 1)))
        video_out.write_video(
            path,
            vae,
            latent,
            fps,
            chunk_size=decode_chunk_size,
            audio=audio,
            paste=paste,
            color_match=color_match,
            metadata=cls._metadata(),
            progress=lambda done, total: bar.update_absolute(done, total),
        )
        saved = ui.PreviewVideo([ui.SavedResult(file_name, subfolder, io.FolderType.output)])
        return io.NodeOutput(InputImpl.VideoFromFile(path), ui=saved)

    @classmethod
    def _metadata(cls) -> dict | None:
        """The workflow and prompt, embedded as Save Video does (unless ComfyUI runs with --disable-metadata)."""
        hidden = cls.hidden  # None when called outside ComfyUI's executor
        if args.disable_metadata or hidden is None:
            return None
        metadata = dict(hidden.extra_pnginfo or {})
        if hidden.prompt is not None:
            metadata["prompt"] = hidden.prompt
        return metadata or None


NODES = [XNeMoSaveVideo]
