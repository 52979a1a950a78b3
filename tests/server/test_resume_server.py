"""A render killed with its server resumes on a fresh server that shares the output folder, and ends with the clip of
an uninterrupted run, bit for bit (tiny weights, 10 frames in two windows, 4 steps)."""

from __future__ import annotations

import time
from pathlib import Path

import comfy_harness
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from server_graphs import SIZE, pipeline

STEPS = 4
SAMPLE = {"steps": STEPS, "seed": 3, "context_length": 8, "context_overlap": 2}


def _server(work: Path, cache: Path) -> comfy_harness.ComfyServer:
    server = comfy_harness.start_server(work, comfy_dir=comfy_harness.comfyui_dir())
    for folder in ("x-nemo", "clip_vision", "vae"):
        for source in (cache / folder).iterdir():
            target = server.model_dirs[folder] / source.name
            if not target.exists():
                target.symlink_to(source)
    return server


def _checkpoint_step(folder: Path) -> int:
    """The step of the newest resume checkpoint in `folder` (0 when there is none yet)."""
    for path in folder.glob("xnemo_resume_*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as f:
                return int(f.metadata()["step"])
        except (OSError, ValueError, KeyError):  # replaced while we read it: look again
            return 0
    return 0


def _latent(server, entry) -> dict:
    (file,) = [f for f in server.client().output_files(entry) if f["filename"].endswith(".latent")]
    return load_file(server.output_dir / file["subfolder"] / file["filename"])


def test_a_killed_server_resumes_on_a_fresh_one(tmp_path_factory, media_dir):
    from make_tiny_weights import write_tiny_models

    cache = tmp_path_factory.getbasetemp() / "xnemo_tiny_models"
    written = write_tiny_models(cache)
    models = {"safetensors": written["x-nemo"], "clip_vision": written["clip_vision"], "vae": written["vae"]}
    work = tmp_path_factory.mktemp("resume_server")
    portrait = work / "resume_portrait.png"
    Image.open(media_dir / "ref_image.png").convert("RGB").resize((SIZE, SIZE), Image.LANCZOS).save(portrait)
    checkpoints = work / "output" / "xnemo_resume"

    first = _server(work, cache)
    try:
        pictures = {"portrait": first.client().upload_image(portrait)}
        graph = pipeline(models, pictures, frames=10, sample=SAMPLE, prefix="resume_")
        first.client().queue_prompt(graph)
        deadline = time.monotonic() + 600
        while (step := _checkpoint_step(checkpoints)) < 2:
            assert first.process.poll() is None, first.log_tail()
            assert time.monotonic() < deadline, "no checkpoint of step 2 within 10 minutes"
            time.sleep(0.02)
        first.process.kill()  # no cleanup, no finally: a crash
        first.process.wait(timeout=30)
    finally:
        first.stop()
    assert 2 <= step < STEPS

    second = _server(work, cache)
    try:
        client = second.client()
        resumed = client.run(graph, timeout=600)
        log = second.log_text()
        assert "X-NeMo resume: resuming at step" in log, second.log_tail()
        at = int(log.split("X-NeMo resume: resuming at step ")[1].split()[0])
        assert at >= step
        assert not list(checkpoints.glob("*.safetensors")), "removed when the render completes"
        # The same render uninterrupted: resume off only changes what is written, not what is computed.
        fresh = client.run(pipeline(models, pictures, frames=10, sample={**SAMPLE, "resume": False}, prefix="resume_"))
        a, b = _latent(second, resumed), _latent(second, fresh)
    finally:
        second.stop()
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "the resumed clip differs from the full run"
