"""X-NeMo Save Video (streaming): the same frames as the core path, the driving fps and audio in the file, and never
more than one chunk in memory (checked on the order of the work, not timed).

The core path is what the example workflows ran before: X-NeMo VAE Decode -> X-NeMo Paste Back -> core Create Video
-> Save Video (`VideoFromComponents.save_to`). A tiny temporal VAE of ComfyUI's real classes keeps it fast; peak
memory at 120-1,000 frames with the full-size decoder is measured by benchmarks/output_memory.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import comfy.model_management
import folder_paths
import numpy as np
import pytest
import torch
from comfy_extras.nodes_video import CreateVideo
from test_vae_clip import tiny_vae

from xnemo_pack.nodes.paste_back import XNeMoPasteBack
from xnemo_pack.nodes.save_video import NODES, XNeMoSaveVideo
from xnemo_pack.nodes.vae import XNeMoVAEDecode
from xnemo_pack.xnemo_core.adapters import vae as vae_adapter
from xnemo_pack.xnemo_core.adapters import video_out
from xnemo_pack.xnemo_core.pure import compose
from xnemo_pack.xnemo_core.pure.payloads import CropInfo

FRAMES, CHUNK, FPS = 30, 7, 29.97  # 5 chunks (7, 7, 7, 7, 2); an fps that is not a whole number
CROP = CropInfo(box=(40, 20, 104, 84), image_size=(120, 160), crop_size=(16, 16))
RATE, TONES = 16000, (440.0, 660.0)  # one tone per channel: the channels must not be swapped or mixed


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return torch.randn(FRAMES, 4, 2, 2, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def original() -> torch.Tensor:
    """Smooth, so that what H.264 keeps of it can be compared with the float frames."""
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 160), indexing="ij")
    return torch.stack([rows, cols, (rows + cols) / 2], dim=-1)[None]


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    return tmp_path


def audio(seconds: float) -> dict:
    t = torch.arange(int(RATE * seconds)) / RATE
    waveform = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in TONES])[None]
    return {"waveform": waveform, "sample_rate": RATE}


def read_frames(path) -> tuple[np.ndarray, Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream.average_rate


def save(latent, vae, **kw):
    out = XNeMoSaveVideo.execute({"samples": latent}, vae, FPS, "xnemo/test", CHUNK, **kw)
    shown = out.ui.as_dict()
    assert shown["animated"] == (True,), "shown in the UI as Save Video shows its file"
    return out, shown["images"][0]


def saved_path(output_dir, item):
    return output_dir / item["subfolder"] / item["filename"]


def test_schema_is_complete():
    assert NODES == [XNeMoSaveVideo]
    schema = XNeMoSaveVideo.define_schema()
    schema.validate()
    assert (schema.node_id, schema.display_name) == ("XNeMoSaveVideo", "X-NeMo Save Video (streaming)")
    assert schema.is_output_node
    info = XNeMoSaveVideo.GET_NODE_INFO_V1()
    assert list(info["input"]["required"]) == ["samples", "vae", "fps", "filename_prefix", "decode_chunk_size"]
    assert list(info["input"]["optional"]) == ["audio", "crop", "original", "feather", "color_match"]
    specs = {**info["input"]["required"], **info["input"]["optional"]}
    assert all(spec[1].get("tooltip") for spec in specs.values())
    assert specs["decode_chunk_size"][1]["default"] == 25, "the official chunk"
    assert info["output"] == ["VIDEO"] and all(info["output_tooltips"])


@pytest.mark.parametrize("color_match", [False, True])
def test_streamed_file_equals_the_core_path(vae, latent, original, output_dir, color_match):
    """Decode + Paste Back + Create Video + Save Video, against the streamed file: the same decoded frames."""
    out, item = save(latent, vae, crop=CROP, original=original, feather=0.1, color_match=color_match)
    streamed, rate = read_frames(saved_path(output_dir, item))

    images = XNeMoVAEDecode.execute({"samples": latent}, vae, CHUNK).args[0]
    pasted = XNeMoPasteBack.execute(images, CROP, original, 0.1, color_match).args[0]
    video = CreateVideo.execute(pasted, FPS).args[0]
    video.save_to(str(output_dir / "core.mp4"))
    core, core_rate = read_frames(output_dir / "core.mp4")

    assert streamed.shape == (FRAMES, 120, 160, 3)
    assert rate == core_rate == Fraction(29970, 1000)
    assert np.array_equal(streamed, core)

    # and the file is the animation, not a black or frozen clip: 8x8 block means within H.264's loss
    def blocks(x):
        return x.reshape(FRAMES, 15, 8, 20, 8, 3).mean((2, 4))

    assert np.abs(blocks(streamed.astype(np.float64)) - blocks(pasted.double().numpy() * 255)).mean() < 6
    assert np.abs(np.diff(streamed[:, 20:84, 40:104].astype(np.int16), axis=0)).mean() > 2
    assert out.result[0].get_dimensions() == (160, 120)


def test_uint8_frames_before_encoding_are_the_core_paths(vae, latent, original, output_dir, monkeypatch):
    """What reaches the encoder, frame for frame: exactly the core path's 8-bit frames (no codec in between)."""
    seen = []
    real = av.VideoFrame.from_ndarray

    def spy(array, format):
        seen.append(array.copy())
        return real(array, format=format)

    monkeypatch.setattr(video_out, "av", _AvSpy(spy))
    save(latent, vae, crop=CROP, original=original)
    images = vae_adapter.decode_frames(vae, latent, CHUNK)
    pasted, _ = compose.paste_back(images, CROP, original)
    assert np.array_equal(np.stack(seen), (pasted * 255).clamp(0, 255).byte().numpy())


class _AvSpy:
    """`av` as video_out sees it, with VideoFrame.from_ndarray replaced (the real class cannot be patched)."""

    def __init__(self, from_ndarray):
        self._from_ndarray = from_ndarray
        self.VideoFrame = type("VideoFrame", (), {"from_ndarray": staticmethod(from_ndarray)})

    def __getattr__(self, name):
        return getattr(av, name)


def test_fps_and_audio_are_carried_into_the_file(vae, latent, output_dir):
    seconds = 3.0  # longer than the clip (30 frames at 29.97 fps = 1.001 s): cut to the video's length
    _, item = save(latent, vae, audio=audio(seconds))
    with av.open(str(saved_path(output_dir, item))) as container:
        assert container.streams.video[0].average_rate == Fraction(29970, 1000)
        assert container.streams.video[0].frames == FRAMES
        (stream,) = container.streams.audio
        assert (stream.codec_context.name, stream.sample_rate, stream.channels) == ("aac", RATE, 2)
        sound = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=-1)
    # the clip's duration (AAC adds up to one 1,024-sample frame of padding), not the 3 s given
    assert abs(sound.shape[-1] - math.ceil(RATE * FRAMES / Fraction(29970, 1000))) <= 2048
    for channel, tone in enumerate(TONES):
        spectrum = np.abs(np.fft.rfft(sound[channel]))
        peak = np.fft.rfftfreq(sound.shape[-1], 1 / RATE)[spectrum.argmax()]
        assert abs(peak - tone) < 5, f"channel {channel}: {peak:.1f} Hz, expected {tone} Hz"


def test_without_paste_back_the_crop_is_saved(vae, latent, output_dir):
    _, item = save(latent, vae)
    frames, _ = read_frames(saved_path(output_dir, item))
    images = XNeMoVAEDecode.execute({"samples": latent}, vae, CHUNK).args[0]
    CreateVideo.execute(images, FPS).args[0].save_to(str(output_dir / "core.mp4"))
    assert frames.shape == (FRAMES, 16, 16, 3)
    assert np.array_equal(frames, read_frames(output_dir / "core.mp4")[0])


def test_never_holds_more_than_one_chunk(vae, latent, original, output_dir, monkeypatch):
    """Structural boundedness: every chunk is decoded, pasted back and handed to the encoder before the next chunk
    is decoded; nothing whole-clip (decode_frames, paste_back) runs; no step sees more frames than a chunk."""
    events = []
    decoder = vae.first_stage_model
    real_decode = decoder.decode
    real_composite = compose.PasteBack.composite

    def decode(z, **kw):
        events.append(("decode", z.shape[0]))
        return real_decode(z, **kw)

    def composite(self, frames, start):
        events.append(("paste", frames.shape[0]))
        return real_composite(self, frames, start)

    def encoded(array, format):
        events.append(("encode", 1))
        return av.VideoFrame.from_ndarray(array, format=format)

    def whole(*a, **k):
        raise AssertionError("the streaming node must not materialise the clip")

    monkeypatch.setattr(decoder, "decode", decode)
    monkeypatch.setattr(compose.PasteBack, "composite", composite)
    monkeypatch.setattr(video_out, "av", _AvSpy(encoded))
    monkeypatch.setattr(vae_adapter, "decode_frames", whole)
    monkeypatch.setattr(compose, "paste_back", whole)
    save(latent, vae, crop=CROP, original=original)

    decodes = [n for kind, n in events if kind == "decode"]
    assert decodes == [7, 7, 7, 7, 2]
    # between two decodes: exactly the previous chunk, pasted in batches of at most ENCODE_BATCH and encoded
    runs, current = [], None
    for kind, n in events:
        if kind == "decode":
            current = {"decoded": n, "paste": [], "encode": 0}
            runs.append(current)
        else:
            current[kind] = current[kind] + [n] if kind == "paste" else current[kind] + n
    for run in runs:
        assert sum(run["paste"]) == run["encode"] == run["decoded"], run
        assert max(run["paste"]) <= video_out.ENCODE_BATCH


def test_color_match_decodes_twice_and_ticks_both_passes(vae, latent, original, output_dir, monkeypatch):
    import comfy.utils

    ticks = []
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", lambda self, v, total=None, p=None: ticks.append(v))
    save(latent, vae, crop=CROP, original=original, color_match=True)
    assert ticks == list(range(1, 11))  # 5 chunks for the colour statistics, 5 written


def test_a_cancel_leaves_no_partial_file(vae, latent, output_dir, monkeypatch):
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        save(latent, vae)
    assert not [p for p in output_dir.rglob("*.mp4")]


def test_bad_inputs_say_what_to_do(vae, latent, original, output_dir):
    with pytest.raises(ValueError, match="connect both crop"):
        save(latent, vae, original=original)
    with pytest.raises(ValueError, match="connect both crop"):
        save(latent, vae, crop=CROP)
    with pytest.raises(ValueError, match="one image or one per animated frame"):
        save(latent, vae, crop=CROP, original=original.expand(3, -1, -1, -1))
    with pytest.raises(ValueError, match="mix it down"):
        save(latent, vae, audio={"waveform": torch.zeros(1, 3, 100), "sample_rate": RATE})
    with pytest.raises(ValueError, match="fps is 0"):
        video_out.frame_rate_of(0)
    assert not [p for p in output_dir.rglob("*.mp4")]
