"""Checkpoint files through a real server: damaged, wrong, malicious or missing files are loader errors that
name the fix; two weight sets load side by side in one graph.

Every failure must reach the user as a ComfyUI node error (an `execution_error` in /history, or a validation
error from POST /prompt) whose message names the input and the fix, never a traceback from deep inside torch.
Graphs come from server_graphs.pipeline at tiny sizes (128 px, 1-4 frames, 1 step)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from server_graphs import execution_error, pipeline, rejection

pytestmark = pytest.mark.server


def _bad_file(kind: str, folder: Path, fixture_dir: Path, marker: Path) -> tuple[str, str]:
    """Write a bad checkpoint into the server's x-nemo folder; returns (file name, loader slot it goes in)."""
    import safetensors.torch
    from make_tiny_weights import tiny_unet_state_dict

    from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt

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
        (folder / name).write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"not": json' + b"\x00" * 200)
        return name, "temporal_module"
    if kind == "full_vs_tiny":  # a ReferenceNet twice as wide as the denoising UNet
        name = "hardening_reference_64ch.pth"
        shape = ckpt.UNetShape(
            model_channels=64,
            channel_mult=(1, 1, 1, 2),
            num_res_blocks=2,
            context_dim=768,
            in_channels=4,
            attention_levels=(True, True, True, False),
            has_output=False,
        )
        sd = tiny_unet_state_dict(shape, torch.Generator().manual_seed(0))
        torch.save(
            {k: v.half() for k, v in sd.items() if not k.startswith(("conv_norm_out.", "conv_out."))}, folder / name
        )
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
    "wrong_slot": (
        "hardening_motion_as_unet.pth was given as the denoising unet but it looks like xnemo_motion_encoder",
        "Pick xnemo_denoising_unet.pth",
    ),
    "truncated": ("Could not read hardening_truncated.pth: the file is truncated or corrupt", "Download it again"),
    "corrupt_safetensors": (
        "Could not read hardening_corrupt.safetensors: the file is truncated or corrupt",
        "Download it again",
    ),
    "full_vs_tiny": (
        "hardening_reference_64ch.pth (channels 64 x (1, 1, 1, 2)) does not match "
        "xnemo_denoising_unet.safetensors (channels 32 x (1, 1, 1, 2))",
        "Use the four files of one release",
    ),
    "malicious_pickle": (
        "Refused to load hardening_malicious.pth",
        "could run code on load",
        "Unsupported global",
        "Use the official file",
    ),
    "int8_safetensors": (
        "hardening_int8.safetensors stores weights as torch.int8",
        "X-NeMo weights are float16/bfloat16/float32",
        "use the official file",
    ),
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
    message = rejection(
        comfy_client, pipeline(models, pictures, files={**models["safetensors"], "denoising_unet": "nope.safetensors"})
    )
    assert "denoising_unet: nope.safetensors is not in models/x-nemo/" in message
    assert "Put the official xnemo_denoising_unet.pth there and refresh" in message


def test_two_xnemo_loads_in_one_graph(comfy_client, models, pictures):
    """The fixture .pth set and the tiny .safetensors set, each through its own pipeline, in one prompt."""
    prompt = {
        **pipeline(models, pictures, files=models["pth"], prefix="a_", sample={"seed": 7}),
        **pipeline(models, pictures, files=models["safetensors"], prefix="b_", sample={"seed": 7}),
    }
    entry = comfy_client.run(prompt, timeout=300)
    files = {f["node"]: f for f in comfy_client.output_files(entry)}
    assert set(files) >= {"a_out", "b_out"}
    latents = [
        comfy_client.view(files[n]["filename"], files[n]["subfolder"], files[n]["type"]) for n in ("a_out", "b_out")
    ]
    assert latents[0] != latents[1], "two different X-NeMo weight sets gave the same latent"
