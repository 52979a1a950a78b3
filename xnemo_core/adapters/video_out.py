"""Stream a LATENT to a video file: the official fixed-chunk decode, paste back and H.264 encoding, chunk by chunk.

The core path (X-NeMo VAE Decode -> Paste Back -> Create Video -> Save Video) holds the whole clip as float32 at
every step: 3 GiB of decoded frames for 1,000 frames at 512 px, 24.9 GB once pasted into a 1080p original.
ComfyUI's VIDEO type cannot stream either: `VideoFromComponents` keeps an IMAGE tensor of every frame and its
`save_to` iterates over it. Here each decoded chunk is pasted back and encoded before the next one is decoded, so the
peak is one chunk's, whatever the clip length. The encoding is Save Video's own (PyAV, H.264 yuv420p, frames
truncated to 8 bits as `VideoFromComponents.save_to` does, AAC audio), so short clips give the same frames both ways.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch

from ..pure.compose import PasteBack
from ..pure.constants import DECODE_CHUNK_SIZE
from . import vae as xvae

logger = logging.getLogger("xnemo")

Progress = Callable[[int, int], None]

ENCODE_BATCH = 4  # full-size frames composited and converted at once: 100 MB of float32 at 1080p
AUDIO_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


@dataclass(frozen=True)
class WrittenVideo:
    path: str
    frames: int
    width: int
    height: int
    frame_rate: Fraction
    audio: bool


def frame_rate_of(fps: float) -> Fraction:
    """Save Video's rate for a float fps (1/1000 steps), so both paths write the same timestamps."""
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps is {fps}: give the driving video's frame rate (Get Video Components' fps), above 0")
    return Fraction(round(fps * 1000), 1000)


def check_audio(audio) -> tuple[torch.Tensor, int] | None:
    """ComfyUI's AUDIO ({"waveform": [batch, channels, samples], "sample_rate"}) -> (waveform of the first batch
    item [channels, samples], sample rate); None when there is no audio."""
    if audio is None:
        return None
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("audio must be ComfyUI AUDIO (e.g. Get Video Components' audio output)")
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    if waveform.ndim != 3 or waveform.shape[-1] == 0:
        raise ValueError(f"audio waveform of shape {tuple(waveform.shape)}: expected [batch, channels, samples]")
    if waveform.shape[1] not in AUDIO_LAYOUTS:
        raise ValueError(
            f"audio has {waveform.shape[1]} channels; the video takes mono, stereo or 5.1: mix it down first"
        )
    return waveform[0], rate


def write_video(
    path: str,
    vae,
    samples: torch.Tensor,
    fps: float,
    *,
    chunk_size: int = DECODE_CHUNK_SIZE,
    audio=None,
    paste: PasteBack | None = None,
    color_match: bool = False,
    metadata: dict | None = None,
    progress: Progress | None = None,
) -> WrittenVideo:
    """Decode `samples` [F, 4, h, w] in the official chunks, paste each chunk back (when `paste` is given) and
    encode it into an MP4 at `path` before decoding the next: memory is one chunk's, never the clip's.

    `color_match` needs the colour statistics of every frame before the first one is written, so it decodes the
    clip twice (the first pass keeps only the sums). `audio` (ComfyUI AUDIO) is cut to the clip's duration and
    interleaved with the frames. On an error or a cancel the partial file is removed."""
    rate = frame_rate_of(fps)
    sound = check_audio(audio)
    passes = 2 if paste is not None and color_match else 1
    chunks = -(-samples.shape[0] // max(chunk_size, 1))

    def ticks(offset: int) -> Progress | None:
        return None if progress is None else (lambda done, total: progress(offset + done, passes * total))

    if passes == 2:
        paste.fit_colors(pixels for _, pixels in xvae.decoded_chunks(vae, samples, chunk_size, ticks(0)))
    decoded = xvae.decoded_chunks(vae, samples, chunk_size, ticks((passes - 1) * chunks))
    try:
        with av.open(path, mode="w", options={"movflags": "use_metadata_tags+faststart"}) as container:
            for key, value in (metadata or {}).items():
                container.metadata[key] = json.dumps(value)
            return _encode(container, path, _frames(decoded, paste), rate, sound)
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise


def _frames(decoded: Iterator[tuple[int, torch.Tensor]], paste: PasteBack | None) -> Iterator[torch.Tensor]:
    """Output frames in batches of at most ENCODE_BATCH (full size when pasted back)."""
    for start, pixels in decoded:
        for i in range(0, pixels.shape[0], ENCODE_BATCH):
            part = pixels[i : i + ENCODE_BATCH]
            yield part if paste is None else paste.composite(part, start + i)
        del pixels


def _encode(container, path: str, frames: Iterator[torch.Tensor], rate: Fraction, sound) -> WrittenVideo:
    video = audio_stream = None
    written = width = height = 0
    audio_done = 0
    for batch in frames:
        if video is None:
            height, width = batch.shape[1] // 2 * 2, batch.shape[2] // 2 * 2
            if (height, width) != tuple(batch.shape[1:3]):
                logger.warning(
                    "X-NeMo Save Video: H.264 needs even sizes; writing %dx%d of the %dx%d frames",
                    width,
                    height,
                    batch.shape[2],
                    batch.shape[1],
                )
            if width == 0 or height == 0:
                raise ValueError(f"frames of {batch.shape[2]}x{batch.shape[1]} pixels are too small for a video")
            video = container.add_stream("h264", rate=rate)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            if sound is not None:
                waveform, sample_rate = sound
                audio_stream = container.add_stream("aac", rate=sample_rate, layout=AUDIO_LAYOUTS[waveform.shape[0]])
        # 8 bits as Save Video's VideoFromComponents: x 255, clamped, truncated (in place: the batch is ours alone)
        rgb = batch[:, :height, :width].mul_(255).clamp_(0, 255).byte().cpu().numpy()
        del batch
        for image in rgb:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
            container.mux(video.encode(frame))
        written += rgb.shape[0]
        if audio_stream is not None:
            audio_done = _encode_audio(container, audio_stream, sound, audio_done, _samples_for(written, rate, sound))
    if video is None:
        raise ValueError("the latent has no frames to write")
    container.mux(video.encode(None))
    if audio_stream is not None:
        _encode_audio(container, audio_stream, sound, audio_done, _samples_for(written, rate, sound))
        container.mux(audio_stream.encode(None))
    return WrittenVideo(path, written, width, height, rate, audio_stream is not None)


def _samples_for(frames: int, rate: Fraction, sound) -> int:
    """Audio samples up to the end of `frames` frames (Save Video cuts the waveform the same way)."""
    waveform, sample_rate = sound
    return min(waveform.shape[-1], math.ceil(sample_rate / rate * frames))


def _encode_audio(container, stream, sound, start: int, stop: int) -> int:
    """Encode samples start..stop; returns where the next piece starts."""
    if stop <= start:
        return start
    waveform, sample_rate = sound
    piece = waveform[:, start:stop].float().cpu().contiguous().numpy()
    frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=AUDIO_LAYOUTS[waveform.shape[0]])
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, sample_rate)
    container.mux(stream.encode(frame))
    return stop
