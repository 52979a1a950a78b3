"""Node inputs in-process, the cases a server graph cannot build: grayscale and empty IMAGE batches, a clip longer than
any cap, exact face boxes with several faces, and no socket opened by the whole node pipeline.

The nodes are called in-process on the real comfy package, with the tiny fixture weights (and the tiny random CLIP
ViT-L + SD VAE of `demo_weights` for the network test).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from xnemo_pack.nodes.loader import XNeMoLoader
from xnemo_pack.nodes.motion import XNeMoEncodeMotion
from xnemo_pack.nodes.reference import XNeMoReferenceCondition
from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.xnemo_core.adapters import sampling
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES
from xnemo_pack.xnemo_core.pure.errors import XNeMoError

SIZE = 128
FACE_ARGS = {"detector": "haar", "face_index": 0, "face_order": "largest"}
MOTION_ARGS = {
    **FACE_ARGS,
    "crop_scale": 1.1,
    "smoothing_sigma": 5.0,
    "missing_face": "interpolate",
    "f_rts_mode": "official",
}
SAMPLE_ARGS = {
    "seed": 0,
    "steps": 1,
    "cfg": 2.5,
    "sampler_name": "xnemo_ddim",
    "scheduler": "xnemo_ddim",
    "denoise": 1.0,
    "context_length": 24,
    "context_overlap": 4,
    "closed_loop": True,
    "offset_mode": "seeded",
}


@pytest.fixture(scope="module")
def xnemo(fixture_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")


@pytest.fixture(scope="module")
def portrait(media_dir) -> torch.Tensor:
    image = Image.open(media_dir / "ref_image.png").convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def encode(xnemo, images, **options):
    return XNeMoEncodeMotion.execute(xnemo[1], images, **{**MOTION_ARGS, **options}).result[0]


@pytest.mark.parametrize("channels", [1, 2])
def test_grayscale_driving_frames(xnemo, portrait, channels):
    gray = portrait.mean(-1, keepdim=True).expand(-1, -1, -1, channels)  # gray (+ alpha)
    motion = encode(xnemo, gray)
    assert motion.frames == 1 and bool(motion.face_found.all()) and motion.tokens.shape == (1, 32, 16)


def test_empty_inputs_name_the_input(xnemo, portrait):
    with pytest.raises(
        ValueError,
        match=r"images must be a batch of at least one frame, got shape \(0, 128, 128, 3\): "
        r"connect driving video frames",
    ):
        encode(xnemo, portrait[:0])
    motion = encode(xnemo, portrait)
    with pytest.raises(
        ValueError,
        match=r"image must be one picture \[1, H, W, C\], got shape \(0, 128, 128, 3\): "
        r"connect the portrait",
    ):
        XNeMoReferenceCondition.execute(xnemo[1], portrait[:0], None, None, motion, SIZE, SIZE, **FACE_ARGS)


def test_reference_crop_mode_is_checked_at_queue_time():
    assert XNeMoReferenceCondition.validate_inputs(crop_mode="widen") is True
    message = XNeMoReferenceCondition.validate_inputs(crop_mode="stretch")
    assert message.startswith("crop_mode is 'stretch', which is not one of: official, widen. Pick one from the list")


def test_frame_count_above_the_cap(xnemo):
    latent = {"samples": torch.zeros(1, 4, 16, 16).expand(sampling.MAX_FRAMES + 1, -1, -1, -1)}
    with pytest.raises(
        XNeMoError,
        match=f"the latent has {sampling.MAX_FRAMES + 1} frames; X-NeMo samples "
        f"1..{sampling.MAX_FRAMES} frames per run",
    ):
        XNeMoSampleAnimation.execute(xnemo[0], None, None, latent, **SAMPLE_ARGS)


def test_several_faces_follow_face_index(xnemo, portrait):
    pair = torch.cat([portrait, portrait], dim=2)  # the same face left and right
    left = encode(xnemo, pair, face_index=0, face_order="left_to_right").boxes
    right = encode(xnemo, pair, face_index=1, face_order="left_to_right").boxes
    assert bool((left[:, 2] <= SIZE).all()) and bool((right[:, 0] >= SIZE).all())
    assert torch.allclose(right[:, 0::2] - SIZE, left[:, 0::2], atol=2.0)  # the same face, shifted by one width


def test_sample_validate_inputs_checks_ranges():
    assert (
        XNeMoSampleAnimation.validate_inputs(steps=0) == "steps is 0: it must be at least 1 (the official value is 35)"
    )
    assert XNeMoSampleAnimation.validate_inputs(steps=1001, scheduler="normal") == (
        "steps is 1001: the largest allowed value is 1000"
    )
    assert "context_overlap is -1: the smallest allowed value is 0" in XNeMoSampleAnimation.validate_inputs(
        context_overlap=-1
    )
    assert "context_length is 0" in XNeMoSampleAnimation.validate_inputs(context_length=0)
    assert "denoise is 0.0" in XNeMoSampleAnimation.validate_inputs(denoise=0.0)
    assert "steps / denoise is 1000" in XNeMoSampleAnimation.validate_inputs(steps=500, denoise=0.5)
    assert "scheduler is 'nope', which is not one of: xnemo_ddim" in XNeMoSampleAnimation.validate_inputs(
        scheduler="nope"
    )
    assert "context_overlap (4) must be smaller" in XNeMoSampleAnimation.validate_inputs(
        context_length=4, context_overlap=4
    )
    assert XNeMoSampleAnimation.validate_inputs(steps=1, context_length=1, context_overlap=0) is True


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": -1}, "seed is -1: use a whole number from 0 to 18446744073709551615"),
        ({"seed": 2**64}, "seed is 18446744073709551616"),
        ({"cfg": -0.5}, "cfg is -0.5: use 0..30"),
        ({"cfg": float("nan")}, "cfg is nan"),
    ],
)
def test_sample_settings_refuse_seed_and_cfg_out_of_range(change, message):
    """For callers that skip ComfyUI's queue-time checks (in-process use): the same ranges as the node's inputs."""
    with pytest.raises(XNeMoError, match=re.escape(message)):
        replace(sampling.SampleSettings(), **change).validate(8)


# ----------------------------------------------------------------------------------------------------------------------
# No network


@pytest.fixture
def outside_connections(monkeypatch) -> list:
    """Record (and refuse) every socket connection or datagram to anything but loopback."""
    seen = []

    def outside(address) -> bool:
        if isinstance(address, tuple) and address:
            try:
                return not ipaddress.ip_address(address[0]).is_loopback
            except ValueError:  # a host name: would need DNS, itself a network access
                return address[0] != "localhost"
        return False  # AF_UNIX paths

    def guard(original, name):
        def wrapper(sock, address, *args, **kwargs):
            if outside(address):
                seen.append((name, address))
                raise OSError(f"network access during a test: {name} {address}")
            return original(sock, address, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect, "connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex, "connect_ex"))

    def sendto(sock, data, *args):
        if outside(args[-1]):
            seen.append(("sendto", args[-1]))
            raise OSError(f"network access during a test: sendto {args[-1]}")
        return original_sendto(sock, data, *args)

    original_sendto = socket.socket.sendto
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    original_create = socket.create_connection

    def create_connection(address, *args, **kwargs):
        if outside(address):
            seen.append(("create_connection", address))
            raise OSError(f"network access during a test: create_connection {address}")
        return original_create(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


def test_guard_catches_an_outside_connection(outside_connections):
    with pytest.raises(OSError, match="network access during a test"):
        socket.create_connection(("192.0.2.1", 80), timeout=0.01)  # TEST-NET-1: never reached
    assert outside_connections == [("create_connection", ("192.0.2.1", 80))]


def test_whole_pipeline_opens_no_socket(tmp_path_factory, fixture_dir, portrait, outside_connections):
    """Load X-NeMo -> Encode Motion -> Reference Condition (CLIP vision, VAE) -> Sample Animation -> VAE decode."""
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils
    from make_tiny_weights import write_tiny_models

    root = tmp_path_factory.getbasetemp() / "xnemo_tiny_models"  # shared with the server hardening tests
    written = write_tiny_models(root)
    import folder_paths

    folder_paths.add_model_folder_path("x-nemo", str(fixture_dir))
    model, xnemo = XNeMoLoader.execute(
        **{role: f"{stem}.pth" for role, stem in CHECKPOINT_FILES.items()}, weight_dtype="fp32"
    ).result
    clip_vision = comfy.clip_vision.load(str(root / "clip_vision" / written["clip_vision"]))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(root / "vae" / written["vae"])))
    motion = XNeMoEncodeMotion.execute(xnemo, portrait.expand(2, -1, -1, -1), **MOTION_ARGS).result[0]
    positive, negative, latent, _, _ = XNeMoReferenceCondition.execute(
        xnemo, portrait, clip_vision, vae, motion, SIZE, SIZE, **FACE_ARGS
    ).result
    out = XNeMoSampleAnimation.execute(model, positive, negative, latent, **SAMPLE_ARGS).result[0]
    frames = vae.decode(out["samples"])
    assert frames.shape[-3:] == (SIZE, SIZE, 3) and frames.reshape(-1, SIZE, SIZE, 3).shape[0] == 2
    assert outside_connections == []
