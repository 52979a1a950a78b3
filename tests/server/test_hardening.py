"""Issue 8, hardening: bad files, awkward pictures, edge-case settings and runtime behaviour through a real server.

Every failure must reach the user as a ComfyUI node error (an `execution_error` in /history, or a validation error
from POST /prompt) whose message names the input and the fix, never a traceback from deep inside torch. Sizes are
tiny (128 px, 1-4 frames, 1 step) so the module stays within a few minutes on two CPU cores.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

import comfy_harness

pytestmark = pytest.mark.server

SIZE = 128
# Growth of the server's RSS from the first to the third of three runs that recompute motion, conditioning and
# sampling. Measured ~0-40 MB on CPU with the tiny weights; a leak of the per-run tensors (CLIP embedding, VAE
# latents, reference bank, activations) or of a model copy per run shows up as hundreds of MB.
RSS_GROWTH_LIMIT_MB = 150


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: weights and pictures in the shared server's folders


@pytest.fixture(scope="module")
def models(comfy_server, xnemo_fixture_models, tmp_path_factory) -> dict:
    """Tiny X-NeMo .safetensors + random CLIP ViT-L + SD VAE (written once per session) next to the fixture .pth set."""
    from make_tiny_weights import write_tiny_models

    cache = tmp_path_factory.getbasetemp() / "xnemo_tiny_models"
    written = write_tiny_models(cache)  # skips files that exist: shared with the in-process hardening tests
    for folder in ("x-nemo", "clip_vision", "vae"):
        for source in (cache / folder).iterdir():
            target = comfy_server.model_dirs[folder] / source.name
            if not target.exists():
                target.symlink_to(source)
    return {"pth": dict(xnemo_fixture_models), "safetensors": written["x-nemo"],
            "clip_vision": written["clip_vision"], "vae": written["vae"]}


def _upload(client, image: Image.Image, path: Path) -> str:
    image.save(path)
    return client.upload_image(path)


@pytest.fixture(scope="module")
def pictures(comfy_client, media_dir, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hardening_pictures")
    portrait = Image.open(media_dir / "ref_image.png").convert("RGB")
    small = portrait.resize((SIZE, SIZE), Image.LANCZOS)
    pair = Image.new("RGB", (2 * SIZE, SIZE))
    pair.paste(small, (0, 0))
    pair.paste(small, (SIZE, 0))
    return {
        "portrait": _upload(comfy_client, small, folder / "hardening_portrait.png"),
        "odd": _upload(comfy_client, portrait.resize((123, 97), Image.LANCZOS), folder / "hardening_odd_123x97.png"),
        "two_faces": _upload(comfy_client, pair, folder / "hardening_two_faces.png"),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Graph


def pipeline(models: dict, pictures: dict, *, files: dict | None = None, frames: int = 2, drive: str | None = None,
             encode: dict | None = None, cond: dict | None = None, sample: dict | None = None,
             prefix: str = "", decode: bool = False) -> dict:
    """Load X-NeMo -> Encode Motion (the portrait repeated `frames` times) -> Reference Condition -> Sample -> output.

    `drive` names a node (in `prefix`-less ids of the returned graph) whose IMAGE output 0 replaces the driving frames.
    """
    p = prefix
    weights = dict(files or models["safetensors"])
    g = {
        f"{p}load": {"class_type": "XNeMoLoader", "inputs": {**weights, "weight_dtype": "fp32"}},
        f"{p}portrait": {"class_type": "LoadImage", "inputs": {"image": pictures["portrait"]}},
        f"{p}frames": {"class_type": "RepeatImageBatch", "inputs": {"image": [f"{p}portrait", 0], "amount": frames}},
        f"{p}encode": {"class_type": "XNeMoEncodeMotion", "inputs": {
            "xnemo": [f"{p}load", 1], "images": [drive or f"{p}frames", 0], "detector": "haar", "face_index": 0,
            "face_order": "largest", "crop_scale": 1.1, "smoothing_sigma": 5.0, "missing_face": "interpolate",
            "f_rts_mode": "official", **(encode or {})}},
        f"{p}clip": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": models["clip_vision"]}},
        f"{p}vae": {"class_type": "VAELoader", "inputs": {"vae_name": models["vae"]}},
        f"{p}cond": {"class_type": "XNeMoReferenceCondition", "inputs": {
            "xnemo": [f"{p}load", 1], "image": [f"{p}portrait", 0], "clip_vision": [f"{p}clip", 0],
            "vae": [f"{p}vae", 0], "motion": [f"{p}encode", 0], "width": SIZE, "height": SIZE, "detector": "haar",
            "face_index": 0, "face_order": "largest", **(cond or {})}},
        f"{p}sample": {"class_type": "XNeMoSampleAnimation", "inputs": {
            "model": [f"{p}load", 0], "positive": [f"{p}cond", 0], "negative": [f"{p}cond", 1],
            "latent": [f"{p}cond", 2], "seed": 0, "steps": 1, "cfg": 2.5, "sampler_name": "xnemo_ddim",
            "scheduler": "xnemo_ddim", "denoise": 1.0, "context_length": 24, "context_overlap": 4,
            "closed_loop": True, "offset_mode": "seeded", **(sample or {})}},
    }
    if decode:
        g[f"{p}decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{p}sample", 0], "vae": [f"{p}vae", 0]}}
        g[f"{p}out"] = {"class_type": "PreviewImage", "inputs": {"images": [f"{p}decode", 0]}}
    else:
        g[f"{p}out"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{p}sample", 0],
                                                             "filename_prefix": f"hardening/{p or 'run'}"}}
    return g


def execution_error(client, prompt: dict) -> dict:
    """Run a prompt that must fail; return its execution_error (node_type, exception_type, exception_message)."""
    with pytest.raises(comfy_harness.ExecutionFailed) as failure:
        client.run(prompt, timeout=300)
    errors = [data for kind, data in failure.value.entry["status"]["messages"] if kind == "execution_error"]
    assert errors, f"no execution_error in {failure.value.entry['status']}"
    error = errors[0]
    # Ours, not a torch/numpy/OpenCV error from deep inside: the exception is one of the pack's (or the node's
    # ValueError) and its message names what to do.
    assert error["exception_type"].rsplit(".", 1)[-1] in {
        "CheckpointError", "NoFaceError", "IncompatibleModelError", "XNeMoError", "ValueError"}, error
    return error


def rejection(client, prompt: dict) -> str:
    with pytest.raises(comfy_harness.PromptRejected) as rejected:
        client.queue_prompt(prompt)
    return str(rejected.value)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Checkpoints


def _bad_file(kind: str, folder: Path, fixture_dir: Path, marker: Path) -> tuple[str, str]:
    """Write a bad checkpoint into the server's x-nemo folder; returns (file name, loader slot it goes in)."""
    import safetensors.torch

    from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt
    from make_tiny_weights import tiny_unet_state_dict

    if kind == "wrong_slot":  # the motion encoder given as the denoising UNet
        name = "hardening_motion_as_unet.pth"
        shutil.copyfile(fixture_dir / "xnemo_motion_encoder.pth", folder / name)
        return name, "denoising_unet"
    if kind == "truncated":
        name = "hardening_truncated.pth"
        data = (fixture_dir / "xnemo_denoising_unet.pth").read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        return name, "denoising_unet"
    if kind == "corrupt_safetensors":
        name = "hardening_corrupt.safetensors"
        (folder / name).write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"not\": json" + b"\x00" * 200)
        return name, "temporal_module"
    if kind == "full_vs_tiny":  # a ReferenceNet twice as wide as the denoising UNet
        name = "hardening_reference_64ch.pth"
        shape = ckpt.UNetShape(model_channels=64, channel_mult=(1, 1, 1, 2), num_res_blocks=2, context_dim=768,
                               in_channels=4, attention_levels=(True, True, True, False), has_output=False)
        sd = tiny_unet_state_dict(shape, torch.Generator().manual_seed(0))
        torch.save({k: v.half() for k, v in sd.items() if not k.startswith(("conv_norm_out.", "conv_out."))},
                   folder / name)
        return name, "reference_unet"
    if kind == "malicious_pickle":
        name = "hardening_malicious.pth"
        sd = torch.load(fixture_dir / "xnemo_temporal_module.pth", weights_only=True)
        sd["payload"] = _CreatesFileWhenUnpickled(str(marker))
        torch.save(sd, folder / name)
        return name, "temporal_module"
    if kind == "int8_safetensors":
        name = "hardening_int8.safetensors"
        sd = torch.load(fixture_dir / "xnemo_temporal_module.pth", weights_only=True)
        safetensors.torch.save_file({k: (v * 100).to(torch.int8).contiguous() for k, v in sd.items()}, folder / name)
        return name, "temporal_module"
    raise AssertionError(kind)


class _CreatesFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): proof that the loader ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


CHECKPOINT_CASES = {
    # kind: (fragments the execution_error must contain)
    "wrong_slot": ("hardening_motion_as_unet.pth was given as the denoising unet but it looks like xnemo_motion_encoder",
                   "Pick xnemo_denoising_unet.pth"),
    "truncated": ("Could not read hardening_truncated.pth: the file is truncated or corrupt", "Download it again"),
    "corrupt_safetensors": ("Could not read hardening_corrupt.safetensors: the file is truncated or corrupt",
                            "Download it again"),
    "full_vs_tiny": ("hardening_reference_64ch.pth (channels 64 x (1, 1, 1, 2)) does not match "
                     "xnemo_denoising_unet.safetensors (channels 32 x (1, 1, 1, 2))", "Use the four files of one release"),
    "malicious_pickle": ("Refused to load hardening_malicious.pth", "could run code on load",
                         "Unsupported global", "Use the official file"),
    "int8_safetensors": ("hardening_int8.safetensors stores weights as torch.int8",
                         "X-NeMo weights are float16/bfloat16/float32", "use the official file"),
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_is_a_loader_error(comfy_client, comfy_server, models, pictures, fixture_dir, tmp_path, kind):
    marker = tmp_path / "unpickled_code_ran"
    name, slot = _bad_file(kind, comfy_server.model_dirs["x-nemo"], fixture_dir, marker)
    error = execution_error(comfy_client, pipeline(models, pictures, files={**models["safetensors"], slot: name}))
    assert error["node_type"] == "XNeMoLoader"
    for fragment in CHECKPOINT_CASES[kind]:
        assert fragment in error["exception_message"], error["exception_message"]
    assert error["exception_type"].endswith("CheckpointError")
    if kind == "malicious_pickle":
        assert not marker.exists(), "the malicious pickle was executed"


def test_missing_checkpoint_is_a_validation_error(comfy_client, models, pictures):
    message = rejection(comfy_client, pipeline(models, pictures,
                                               files={**models["safetensors"], "denoising_unet": "nope.safetensors"}))
    assert "denoising_unet: nope.safetensors is not in models/x-nemo/" in message
    assert "Put the official xnemo_denoising_unet.pth there and refresh" in message


# ----------------------------------------------------------------------------------------------------------------------
# 2. Images and video


def test_one_frame_clip_runs(comfy_client, models, pictures):
    entry = comfy_client.run(pipeline(models, pictures, frames=1, decode=True), timeout=300)
    images = [f for f in comfy_client.output_files(entry) if f["node"] == "out"]
    assert len(images) == 1
    png = comfy_client.view(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
    assert png[16:24] == SIZE.to_bytes(4, "big") * 2  # PNG IHDR: width, height


def test_rgba_pictures_are_accepted(comfy_client, models, pictures):
    prompt = pipeline(models, pictures, drive="rgba")
    prompt["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["frames", 0], "alpha": ["portrait", 1]}}
    prompt["cond"]["inputs"]["image"] = ["rgba", 0]
    entry = comfy_client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"


def test_odd_sized_pictures_are_cropped_to_the_requested_size(comfy_client, models, pictures):
    prompt = pipeline(models, pictures)
    prompt["portrait"]["inputs"]["image"] = pictures["odd"]  # 123 x 97, both reference and driving frames
    prompt["crop"] = {"class_type": "PreviewImage", "inputs": {"images": ["cond", 4]}}
    entry = comfy_client.run(prompt, timeout=300)
    crop = [f for f in comfy_client.output_files(entry) if f["node"] == "crop"][0]
    png = comfy_client.view(crop["filename"], crop["subfolder"], crop["type"])
    assert png[16:24] == SIZE.to_bytes(4, "big") * 2


@pytest.mark.parametrize("width,height,fragment", [
    (100, SIZE, "width is 100: it must be a multiple of 64 between 64 and 2048"),
    (SIZE, 72, "height is 72: it must be a multiple of 64 between 64 and 2048"),
    (4096, SIZE, "width is 4096: it must be a multiple of 64 between 64 and 2048"),
])
def test_generation_size_limits_are_validation_errors(comfy_client, models, pictures, width, height, fragment):
    message = rejection(comfy_client, pipeline(models, pictures, cond={"width": width, "height": height}))
    assert fragment in message and "XNeMoReferenceCondition" in message


def grey_frames(batch: int) -> dict:
    """A node making `batch` blank grey frames of the test size (no face anywhere)."""
    return {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch, "color": 0x808080}}


def test_motion_and_latent_frame_counts_must_match(comfy_client, models, pictures):
    """Motion of 4 frames in the conditioning, a latent cut to 2 frames: refused before sampling."""
    prompt = pipeline(models, pictures, frames=4)
    prompt["cut"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["cond", 2], "batch_index": 0, "length": 2}}
    prompt["sample"]["inputs"]["latent"] = ["cut", 0]
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoSampleAnimation"
    assert ("positive carries X-NeMo motion for 4 frames but the latent has 2 frames: connect the latent output of "
            "the same X-NeMo Reference Condition") in error["exception_message"]


def test_no_face_in_driving_frames(comfy_client, models, pictures):
    prompt = pipeline(models, pictures, drive="blank")
    prompt["blank"] = grey_frames(2)
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoEncodeMotion"
    assert "no face was found in any of the 2 frames; use a clip where a face is clearly visible" in \
        error["exception_message"]


def test_no_face_in_reference(comfy_client, models, pictures):
    prompt = pipeline(models, pictures)
    prompt["blank"] = grey_frames(1)
    prompt["cond"]["inputs"]["image"] = ["blank", 0]
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoReferenceCondition"
    assert error["exception_message"].strip() == ("no face was found in the reference image: use a portrait where the face is "
                                          "clearly visible, frontal and at least ~30 px tall")


def test_several_faces_face_index(comfy_client, models, pictures):
    prompt = pipeline(models, pictures)
    prompt["portrait"]["inputs"]["image"] = pictures["two_faces"]
    for node in ("encode", "cond"):
        prompt[node]["inputs"].update(face_index=1, face_order="left_to_right")
    assert comfy_client.run(prompt, timeout=300)["status"]["status_str"] == "success"

    prompt["encode"]["inputs"]["face_index"] = 5
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoEncodeMotion"
    assert ("face_index 5 asks for face #6 (left_to_right), but no frame shows more than 2 face(s); set face_index "
            "to 1 or less") in error["exception_message"]


def test_face_leaving_and_coming_back(comfy_client, models, pictures):
    """Frames: face, blank, blank, face. 'error' lists the gap; 'interpolate' fills it and the clip samples."""
    prompt = pipeline(models, pictures, drive="gap")
    prompt["blank"] = grey_frames(2)
    prompt["face_blank"] = {"class_type": "ImageBatch", "inputs": {"image1": ["portrait", 0], "image2": ["blank", 0]}}
    prompt["gap"] = {"class_type": "ImageBatch", "inputs": {"image1": ["face_blank", 0], "image2": ["portrait", 0]}}
    prompt["encode"]["inputs"]["missing_face"] = "error"
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoEncodeMotion"
    assert ("2 of 4 frames have no face (frames 1-2); set the missing-face policy to 'interpolate' or 'hold'"
            in error["exception_message"])

    prompt["encode"]["inputs"]["missing_face"] = "interpolate"
    assert comfy_client.run(prompt, timeout=300)["status"]["status_str"] == "success"


# ----------------------------------------------------------------------------------------------------------------------
# 3. Parameters


@pytest.mark.parametrize("settings,fragment", [
    ({"steps": 0}, "steps is 0: it must be at least 1"),
    ({"steps": 1000}, "steps / denoise is 1000: the xnemo_ddim schedule has at most 999 steps"),
    ({"context_length": 33}, "context_length is 33: the temporal layers see at most 32 frames at once; use 1..32"),
    ({"context_length": 1}, "context_overlap (4) must be smaller than context_length (1)"),
    ({"context_length": 8, "context_overlap": 8}, "context_overlap (8) must be smaller than context_length (8)"),
    ({"context_length": 8, "context_overlap": 12}, "context_overlap (12) must be smaller than context_length (8)"),
])
def test_bad_sampling_settings_are_validation_errors(comfy_client, models, pictures, settings, fragment):
    message = rejection(comfy_client, pipeline(models, pictures, sample=settings))
    assert fragment in message and "XNeMoSampleAnimation" in message


@pytest.mark.parametrize("settings", [
    {"steps": 1, "cfg": 0.0},
    {"steps": 1, "cfg": 1.0},
    {"steps": 2, "cfg": 2.5, "context_length": 1, "context_overlap": 0},  # one-frame windows, no overlap
    {"steps": 1, "cfg": 2.5, "context_length": 2, "context_overlap": 1},  # windows smaller than the clip
])
def test_edge_sampling_settings_run(comfy_client, models, pictures, settings):
    entry = comfy_client.run(pipeline(models, pictures, frames=3, sample=settings), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert [f for f in comfy_client.output_files(entry) if f["node"] == "out"]


# ----------------------------------------------------------------------------------------------------------------------
# 4. Runtime


def test_interrupt_during_sampling_then_a_normal_run(comfy_client, models, pictures):
    comfy_client.run(pipeline(models, pictures), timeout=300)  # everything but the sampler is cached from here
    prompt_id = comfy_client.queue_prompt(pipeline(models, pictures, sample={"steps": 999, "seed": 1}))
    deadline = time.monotonic() + 120
    entry = None
    while time.monotonic() < deadline:
        running = [item[1] for item in comfy_client.get_json("/queue")["queue_running"]]
        entry = comfy_client.history(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            break
        if prompt_id in running:
            comfy_client.interrupt()  # again every poll: an interrupt that lands before execution starts is reset
        time.sleep(0.5)
    assert entry is not None, "the interrupted prompt never finished"
    status = entry["status"]
    assert status["status_str"] == "error" and not status["completed"]
    interrupted = [data for kind, data in status["messages"] if kind == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_type"] == "XNeMoSampleAnimation", status["messages"][-1]
    assert not [kind for kind, _ in status["messages"] if kind == "execution_error"]

    entry = comfy_client.run(pipeline(models, pictures, sample={"seed": 2}), timeout=300)
    assert entry["status"]["status_str"] == "success"


def test_three_runs_keep_server_memory_flat(comfy_client, comfy_server, models, pictures):
    server = psutil.Process(comfy_server.process.pid)
    rss = []
    for run in range(3):  # new seed and smoothing each run: motion, conditioning and sampling all recompute
        comfy_client.run(pipeline(models, pictures, encode={"smoothing_sigma": 1.0 + run},
                                  sample={"seed": 100 + run}, decode=True), timeout=300)
        rss.append(server.memory_info().rss / 2**20)
    growth = rss[2] - rss[0]
    assert growth < RSS_GROWTH_LIMIT_MB, f"server RSS after each run (MB): {[round(r) for r in rss]}"


def test_two_xnemo_loads_in_one_graph(comfy_client, models, pictures):
    """The fixture .pth set and the tiny .safetensors set, each through its own pipeline, in one prompt."""
    prompt = {**pipeline(models, pictures, files=models["pth"], prefix="a_", sample={"seed": 7}),
              **pipeline(models, pictures, files=models["safetensors"], prefix="b_", sample={"seed": 7})}
    entry = comfy_client.run(prompt, timeout=300)
    files = {f["node"]: f for f in comfy_client.output_files(entry)}
    assert set(files) >= {"a_out", "b_out"}
    latents = [comfy_client.view(files[n]["filename"], files[n]["subfolder"], files[n]["type"]) for n in ("a_out", "b_out")]
    assert latents[0] != latents[1], "two different X-NeMo weight sets gave the same latent"


def test_free_unloads_then_a_run_reloads(comfy_client, models, pictures):
    prompt = pipeline(models, pictures, sample={"seed": 11})
    comfy_client.run(prompt, timeout=300)
    comfy_client.free(unload_models=True, free_memory=True)
    # The worker applies /free after its current queue item; a tiny core prompt makes sure that has happened.
    comfy_client.run({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                   "color": 0}},
                      "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, timeout=60)
    entry = comfy_client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    cached = [data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
    assert cached and "load" not in cached[0], f"Load X-NeMo was not re-run after /free: cached {cached}"


# ----------------------------------------------------------------------------------------------------------------------
# 5. No network


def test_server_opens_no_outside_connections(comfy_client, comfy_server, models, pictures):
    comfy_client.run(pipeline(models, pictures, sample={"seed": 21}), timeout=300)
    server = psutil.Process(comfy_server.process.pid)
    outside = []
    for proc in [server, *server.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            for address in (conn.laddr, conn.raddr):
                if address and not ipaddress.ip_address(address.ip).is_loopback:
                    outside.append((proc.pid, conn.laddr, conn.raddr, conn.status))
    assert outside == []
