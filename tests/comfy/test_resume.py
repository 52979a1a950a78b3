"""Resumable renders in-process on the real `comfy` package with the tiny fixture checkpoints.

What is checked, always by comparing tensors bit for bit: every sampler that resumes gives the plain run's clip when
run step by step; a render interrupted by ComfyUI's own interrupt after step k and queued again resumes at step k and
ends with the uninterrupted clip (several k, two samplers); the progress bar starts at the resumed step; a changed
input, a damaged, truncated or foreign file never resumes; checkpoints are removed on completion and bounded in number;
samplers with state between steps write none.
"""

from __future__ import annotations

import json
import logging
import re

import comfy.model_management
import comfy.utils
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.xnemo_core.adapters import reference_bank as reference
from xnemo_pack.xnemo_core.adapters import resume, sampling, unet_patch
from xnemo_pack.xnemo_core.adapters.sampling import blurred_reference

STEPS = 3
FRAMES, LENGTH, OVERLAP = 10, 8, 2  # two windows per step


@pytest.fixture(scope="module")
def clip(loaded, fixture_dir):
    """(positive, negative, start latent) for FRAMES frames from the fixture's inputs."""
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    bank = reference.compute_reference_bank(loaded[1].reference, inputs["multi.ref_latent"], inputs["clip_embed"])
    positive, negative = unet_patch.xnemo_conditioning(
        inputs["clip_embed"], bank, golden["motenc.drive.tokens"][:FRAMES], golden["motenc.ref.tokens"]
    )
    return positive, negative, blurred_reference(inputs["multi.ref_latent"], FRAMES) / 0.18215


def settings(sampler="xnemo_ddim", scheduler="xnemo_ddim", **changes):
    base = dict(seed=4, steps=STEPS, cfg=2.5, context_length=LENGTH, context_overlap=OVERLAP)
    return sampling.SampleSettings(sampler_name=sampler, scheduler=scheduler, **{**base, **changes})


def render(loaded, clip, store, s, *, latent=None, stop_at=None, on_resume=None):
    """sample_animation with checkpoints in `store`; `stop_at`: ComfyUI's interrupt from the step callback of that
    step (as the server's progress hook does on Cancel), so steps before it are finished and checkpointed."""
    positive, negative, start = clip

    def callback(step, x0, x, total):
        if step == stop_at:
            comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()

    options = None if store is None else resume.ResumeOptions(store, on_resume=on_resume)
    return sampling.sample_animation(
        loaded[0], positive, negative, start if latent is None else latent, s, callback=callback, resume=options
    )


_FULL: dict = {}


def full_run(loaded, clip, s):
    """The uninterrupted, unchecked clip for settings `s` (cached: the tests compare many runs against it)."""
    if s not in _FULL:
        _FULL[s] = render(loaded, clip, None, s)
    return _FULL[s]


def checkpoint_step(store) -> int:
    (path,) = store.files()
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


@pytest.mark.parametrize("sampler", resume.RESUMABLE)
def test_step_by_step_is_the_plain_run_for_every_resumable_sampler(loaded, clip, tmp_path, sampler):
    """The claim behind RESUMABLE: these samplers' steps depend on x and two sigmas only, so one call per step equals
    one call over all sigmas, bit for bit. dpm_2 evaluates between sigmas: fixed window offsets for it."""
    scheduler = "xnemo_ddim" if sampler == "xnemo_ddim" else "normal"
    s = settings(sampler, scheduler, steps=2, offset_mode="none" if sampler == "dpm_2" else "seeded")
    store = resume.CheckpointStore(tmp_path)
    plain = full_run(loaded, clip, s)
    stepwise = render(loaded, clip, store, s)
    assert torch.equal(plain, stepwise)
    assert store.files() == [], "the checkpoint is removed when the render completes"


@pytest.mark.parametrize(("sampler", "scheduler"), [("xnemo_ddim", "xnemo_ddim"), ("heun", "normal")])
def test_interrupt_after_step_k_then_resume_equals_the_full_run(loaded, clip, tmp_path, caplog, sampler, scheduler):
    s = settings(sampler, scheduler)
    full = full_run(loaded, clip, s)
    resumed_at = []
    for k in (1, 2):
        store = resume.CheckpointStore(tmp_path / f"k{k}")
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            render(loaded, clip, store, s, stop_at=k)
        assert checkpoint_step(store) == k
        with caplog.at_level(logging.INFO, logger="xnemo"):
            out = render(loaded, clip, store, s, on_resume=lambda step, steps: resumed_at.append((step, steps)))
        assert resumed_at[-1:] == [(k, STEPS)]
        assert f"resuming at step {k} of {STEPS}" in caplog.text
        assert torch.equal(out, full), f"resumed at step {k}: not the uninterrupted clip"
        assert store.files() == []


def test_changed_inputs_never_resume_and_the_log_names_them(loaded, clip, tmp_path, caplog):
    s = settings(steps=2)
    store = resume.CheckpointStore(tmp_path)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        render(loaded, clip, store, s, stop_at=1)
    changes = {"seed": (settings(steps=2, seed=5), None), "latent": (s, clip[2] + 1e-3)}
    for name, (changed, latent) in changes.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="xnemo"):
            out = render(loaded, clip, store, changed, latent=latent, on_resume=lambda *a: pytest.fail("resumed"))
        said = re.search(r"other inputs \(changed: ([^)]*)\)", caplog.text)
        assert said and name in said.group(1).split(", "), caplog.text
        if name == "seed":
            assert torch.equal(out, full_run(loaded, clip, changed))
    assert checkpoint_step(store) == 1, "the other render's checkpoint stays (bounded) for its own resume"


def test_the_key_covers_model_patches_and_conditioning(loaded, clip):
    positive, negative, latent = clip
    s = settings()
    noise = torch.zeros_like(latent)
    sigmas = torch.tensor([3.0, 1.0, 0.0])

    def key(model=loaded[0], pos=positive):
        return resume.key_of(resume.render_parts(model, pos, negative, latent, noise, sigmas, [0, 1, 2], s))

    base = key()
    assert key() == base, "the key is a function of the inputs"
    patched = loaded[0].clone()
    name = next(iter(patched.model.state_dict()))
    patched.add_patches({name: (torch.ones_like(patched.model.state_dict()[name]),)}, 0.01)
    assert key(patched) != base, "a LoRA-like weight patch changes the key"
    other = [[positive[0][0] + 1e-6, positive[0][1]]]
    assert key(pos=other) != base, "the CLIP embedding is hashed by content"


def test_damaged_or_foreign_checkpoints_are_refused(loaded, clip, tmp_path, caplog):
    """Each kind of bad file is refused by the loader with a message; one of them goes through a whole render,
    which starts over and gives the uninterrupted clip."""
    s = settings(steps=2)
    store = resume.CheckpointStore(tmp_path)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        render(loaded, clip, store, s, stop_at=1)
    (path,) = store.files()
    data = path.read_bytes()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = {name: tensor.clone() for name, tensor in load_file(path).items()}  # not views of the file we rewrite
    key, parts = meta["key"], json.loads(meta["parts"])
    x = tensors["latent"]
    short = x[:-1].contiguous()
    damages = {
        "truncated": lambda: path.write_bytes(data[: len(data) - 100]),
        "flipped": lambda: path.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]),  # only the checksum sees it
        "garbage": lambda: path.write_bytes(b"\x00" * 64),
        "foreign": lambda: save_file({"latent": x}, path, metadata={"format": "something/else"}),
        "other_key": lambda: save_file(tensors, path, metadata={**meta, "key": "0" * 64}),
        "bad_step": lambda: save_file(tensors, path, metadata={**meta, "step": "7"}),
        "wrong_shape": lambda: save_file(
            {**tensors, "latent": short}, path, metadata={**meta, "latent_sha256": resume.tensor_digest(short)}
        ),
    }
    offsets = json.loads(meta["offsets"])
    assert store.load(key, parts, 2, offsets, x.shape, x.dtype).step == 1, "the intact file loads"
    for name, damage in damages.items():
        damage()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="xnemo"):
            assert store.load(key, parts, 2, offsets, x.shape, x.dtype) is None, name
        assert "refusing checkpoint" in caplog.text, name
    damages["flipped"]()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xnemo"):
        out = render(loaded, clip, store, s, on_resume=lambda *a: pytest.fail("resumed from a bad checkpoint"))
    assert "checksum does not match" in caplog.text and "starts at step 0" in caplog.text
    assert torch.equal(out, full_run(loaded, clip, s))


def test_samplers_with_state_between_steps_write_no_checkpoint(loaded, clip, tmp_path, caplog):
    store = resume.CheckpointStore(tmp_path)
    s = settings("dpmpp_2m", "normal")
    with caplog.at_level(logging.INFO, logger="xnemo"):
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            render(loaded, clip, store, s, stop_at=1)
    assert store.files() == []
    assert "'dpmpp_2m' keeps state from step to step" in caplog.text
    assert "dpmpp_2m" not in resume.RESUMABLE and "euler_ancestral" not in resume.RESUMABLE


def test_disk_use_is_bounded(tmp_path):
    store = resume.CheckpointStore(tmp_path, limit=3)
    x = torch.zeros(2, 4, 3, 3)
    keys = [f"{i:x}" * 64 for i in range(5)]  # file names hold the key's first 32 hex digits
    for key in keys:
        store.save(key, {}, 1, 4, x, [0])
    names = [p.name for p in store.files()]
    assert len(names) == 3
    assert names[-1] == store.path(keys[4]).name, "the newest stays"
    assert not store.path(keys[0]).exists(), "the oldest goes"
    assert list(tmp_path.glob("*.tmp")) == []


def test_node_progress_starts_at_the_resumed_step(loaded, clip, output_dir, monkeypatch, caplog):
    """Through the node: Cancel (the progress hook raises, as the server's does) during step 2, queue again: the
    progress bar's first value is the windows of the 2 finished steps, and the log shows the time left."""
    positive, negative, start = clip
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_PERCENT", 0.0, raising=False)
    per_step = 2  # windows per step at FRAMES/LENGTH/OVERLAP

    def run(hook):
        previous = comfy.utils.PROGRESS_BAR_HOOK
        comfy.utils.set_progress_bar_global_hook(hook)
        try:
            args = (4, STEPS, 2.5, "xnemo_ddim", "xnemo_ddim", 1.0, LENGTH, OVERLAP, True, "seeded")
            return XNeMoSampleAnimation.execute(loaded[0], positive, negative, {"samples": start}, *args).args[0]
        finally:
            comfy.utils.set_progress_bar_global_hook(previous)

    def cancel_in_step_2(value, total, preview, node_id=None):
        if value > 2 * per_step:
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(cancel_in_step_2)
    files = list((output_dir / resume.FOLDER).glob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), framework="pt") as f:
        assert json.loads(f.metadata()["offsets"]) == sampling.run_offsets(settings())
    seen = []
    with caplog.at_level(logging.INFO, logger="xnemo"):
        out = run(lambda value, total, preview, node_id=None: seen.append((value, total)))
    assert seen[0] == (2 * per_step, STEPS * per_step), "the bar starts at the resumed step"
    assert seen[-1] == (STEPS * per_step, STEPS * per_step)
    assert f"step 3/{STEPS} done (windows 6/6)" in caplog.text and "left" in caplog.text
    assert list((output_dir / resume.FOLDER).glob("*.safetensors")) == []
    assert torch.equal(out["samples"], full_run(loaded, clip, settings()))
