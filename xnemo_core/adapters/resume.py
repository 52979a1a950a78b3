"""Resumable renders: a checkpoint after every denoising step, so a cancelled or crashed render goes on where it
stopped, and the finished clip is bit-identical to an uninterrupted one.

How it stays exact: ComfyUI's k-diffusion samplers loop over the sigmas. For samplers whose step i depends only on
(x_i, sigma_i, sigma_i+1) and the model, running the sampler one step at a time (on sigmas[i:i+2]) is the same
computation as one run over all sigmas; the checkpoint then only needs x after the last finished step. Samplers that
carry state between steps (multistep history, their own noise generator, adaptive step sizes) are not checkpointed:
a cancelled render with them starts over (`RESUMABLE` lists the others; tests/comfy/test_resume.py checks each one
against the plain run bit for bit).

What decides whether a checkpoint belongs to a render: a SHA-256 key over everything that determines the result, each
tensor hashed by content: the MODEL (weights, the sites' weights, weight patches, object patches, model options), the
conditioning (CLIP embedding, motion, reference bank), the start latent, the noise, the sigmas, the window offsets,
the settings (seed, sampler, scheduler, steps, cfg, denoise, windows, compile) and the ComfyUI / torch versions. One
file per key in `<output>/xnemo_resume/` (ComfyUI wipes its temp folder at every start, so a crash would lose it),
replaced atomically after each step, removed when the render completes; at most `MAX_CHECKPOINTS` files, oldest
evicted. Files are safetensors: no pickle; shapes, dtypes, key and a checksum of the latent are checked before use.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import comfy.model_patcher
import comfy.samplers
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

log = logging.getLogger("xnemo")

FORMAT = "xnemo-resume/1"
FOLDER = "xnemo_resume"  # under ComfyUI's output folder
PREFIX = "xnemo_resume_"
MAX_CHECKPOINTS = 4
STALE_TEMP_S = 600  # a temp file this old was left by a process killed mid-write (never one another render writes)
# Samplers whose step i is a function of (x_i, sigma_i, sigma_i+1) and the model only: run step by step, they give the
# plain run's clip bit for bit. "xnemo_ddim" and "ddim" are ComfyUI's euler on their schedules.
RESUMABLE = ("xnemo_ddim", "ddim", "euler", "euler_cfg_pp", "heun", "dpm_2")


# ---------------------------------------------------------------------------------------------------------------
# Content digests
# ---------------------------------------------------------------------------------------------------------------


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of dtype, shape and bytes (any dtype, any device)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.is_nested or t.device.type == "meta":
        h.update(b"unreadable")
        return h.hexdigest()
    data = t.detach().to("cpu").contiguous().reshape(-1)
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


class _Digest:
    """Streams a stable description of a value into SHA-256: tensors by content, containers recursively, objects by
    class and public attributes, functions by qualified name and closure. Nothing process-specific (ids, addresses)
    goes in, so the same graph gives the same key after a restart."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}
        # Every object numbered in `seen` is kept alive until the digest is done: the attribute dicts made on the fly
        # below would otherwise be freed and their ids reused by the next one, which would then read as a
        # back-reference (a key that changes with memory layout: a cancelled render that never resumes).
        self.alive: list = []

    def put(self, value, depth: int = 0) -> None:
        w = self.h.update
        if depth > 24:
            w(b"<deep>")
            return
        if value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
            w(f"{type(value).__name__}:{value!r};".encode())
            return
        if torch.is_tensor(value):
            w(f"T:{tensor_digest(value)};".encode())
            return
        if id(value) in self.seen:  # shared object or cycle: refer back by order of first sight
            w(f"R:{self.seen[id(value)]};".encode())
            return
        self.seen[id(value)] = len(self.seen)
        self.alive.append(value)
        if isinstance(value, (list, tuple)):
            w(f"{type(value).__name__}[{len(value)}](".encode())
            for item in value:
                self.put(item, depth + 1)
            w(b")")
        elif isinstance(value, dict):
            w(f"dict[{len(value)}](".encode())
            for k in sorted(value, key=repr):
                self.put(k, depth + 1)
                self.put(value[k], depth + 1)
            w(b")")
        elif isinstance(value, (set, frozenset)):
            w(f"set[{len(value)}]({sorted(repr(v) for v in value)});".encode())
        elif isinstance(value, comfy.model_patcher.ModelPatcher):
            w(b"patcher(")
            _put_patcher(self, value, depth + 1)
            w(b")")
        elif isinstance(value, torch.nn.Module):
            w(f"module:{type(value).__qualname__}(".encode())
            self.put(value.state_dict(), depth + 1)
            w(b")")
        elif isinstance(value, functools.partial):
            w(b"partial(")
            self.put((value.func, value.args, value.keywords), depth + 1)
            w(b")")
        elif hasattr(value, "__self__") and hasattr(value, "__func__"):  # bound method
            w(f"method:{value.__func__.__qualname__}(".encode())
            self.put(value.__self__, depth + 1)
            w(b")")
        elif callable(value) and hasattr(value, "__qualname__") and not isinstance(value, type):
            w(f"fn:{getattr(value, '__module__', '')}.{value.__qualname__}(".encode())
            cells = getattr(value, "__closure__", None) or ()
            self.put([c.cell_contents if _cell_full(c) else None for c in cells], depth + 1)
            w(b")")
        elif isinstance(value, type):
            w(f"type:{value.__module__}.{value.__qualname__};".encode())
        else:
            # Objects (patch objects, CONDRegular, ReferenceBank): class and public attributes; leading-underscore
            # attributes are caches by this pack's and ComfyUI's convention (ReferenceBank._cast, ._projected).
            w(f"obj:{type(value).__module__}.{type(value).__qualname__}(".encode())
            attrs = getattr(value, "__dict__", None)
            if attrs is None and dataclasses.is_dataclass(value):
                attrs = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            self.put({k: v for k, v in (attrs or {}).items() if not k.startswith("_")}, depth + 1)
            w(b")")

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _put_patcher(d: _Digest, patcher, depth: int) -> None:
    """A ModelPatcher: its weights as they are without patches (ComfyUI keeps the originals of patched weights in the
    `backup` its clones share), then everything that changes what the weights compute."""
    backup = getattr(patcher, "backup", {}) or {}
    weights = {}
    for name, tensor in patcher.model.state_dict().items():
        if name.startswith("model_sampling."):
            # the schedule's buffers: an object patch (X-NeMo's schedule) swaps the module in while the model is
            # loaded, so they read differently before and after a render; `object_patches` below covers the schedule
            continue
        tensor = backup[name].weight if name in backup else tensor
        # By value in float32: ComfyUI may keep a file's fp16 weights until the first load and convert them to the
        # compute dtype then (exactly), so the stored dtype of the same weights differs before and after a render.
        weights[name] = tensor.float() if tensor.is_floating_point() else tensor
    d.put(weights, depth)
    for attr in (
        "patches",
        "object_patches",
        "weight_wrapper_patches",
        "model_options",
        "wrappers",
        "injections",
        "additional_models",
        "attachments",
        "hook_patches",
        "force_cast_weights",
    ):
        d.put(attr, depth)
        d.put(getattr(patcher, attr, None), depth)
    d.put(str(patcher.load_device), depth)
    d.put(str(getattr(patcher.model, "manual_cast_dtype", None)), depth)


def digest(value) -> str:
    d = _Digest()
    d.put(value)
    return d.hexdigest()


def render_parts(model, positive, negative, latent, noise, sigmas, offsets, settings) -> dict[str, str]:
    """One digest per input that decides the result (the key is their digest; the names make a mismatch readable)."""
    try:
        from comfyui_version import __version__ as comfyui  # ComfyUI's own version file, at its root
    except ImportError:
        comfyui = "unknown"
    settings_dict = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    parts = {"model": digest(model), "positive": digest(positive), "negative": digest(negative)}
    parts["latent"] = tensor_digest(latent)
    parts["noise"] = tensor_digest(noise)
    parts["sigmas"] = tensor_digest(sigmas)
    parts["offsets"] = digest(list(offsets))
    parts.update({name: digest(value) for name, value in sorted(settings_dict.items())})
    parts["versions"] = digest((FORMAT, comfyui, torch.__version__))
    return parts


def key_of(parts: dict[str, str]) -> str:
    return digest(sorted(parts.items()))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    step: int  # finished steps
    latent: torch.Tensor  # x after `step` steps, in the sampler's space (what the sampler loop holds)
    rng: torch.Tensor  # torch's CPU RNG state at that point


class CheckpointStore:
    """One safetensors file per render key in `folder`, at most `limit` files (oldest evicted on write)."""

    def __init__(self, folder: str | os.PathLike, limit: int = MAX_CHECKPOINTS):
        self.folder = Path(folder)
        self.limit = max(1, int(limit))

    def path(self, key: str) -> Path:
        return self.folder / f"{PREFIX}{key[:32]}.safetensors"

    def files(self) -> list[Path]:
        """This folder's checkpoints, oldest first."""
        found = []
        for path in self.folder.glob(f"{PREFIX}*.safetensors") if self.folder.is_dir() else ():
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # removed meanwhile (another render's eviction)
                continue
        return [path for _, path in sorted(found)]

    def save(self, key: str, parts: dict, step: int, steps: int, latent: torch.Tensor, offsets: list[int]) -> Path:
        """Write temp then os.replace: a reader sees the old file or the new one, never half of one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        x = latent.detach().to("cpu").contiguous()
        metadata = {
            "format": FORMAT,
            "key": key,
            "parts": json.dumps(parts, sort_keys=True),
            "step": str(step),
            "steps": str(steps),
            "offsets": json.dumps([int(o) for o in offsets]),
            "latent_sha256": tensor_digest(x),
        }
        rng = torch.get_rng_state()
        metadata["rng_sha256"] = tensor_digest(rng)
        data = safetensors_bytes({"latent": x, "rng": rng}, metadata=metadata)
        target = self.path(key)
        temp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
        self._evict(keep=target)
        return target

    def _evict(self, keep: Path) -> None:
        files = [p for p in self.files() if p != keep]
        for old in files[: max(0, len(files) - (self.limit - 1))]:
            log.info("X-NeMo resume: removing the oldest checkpoint %s (at most %d are kept)", old.name, self.limit)
            old.unlink(missing_ok=True)
        for stale in self.folder.glob(f"{PREFIX}*.tmp"):  # left by a process killed mid-write
            try:
                if time.time() - stale.stat().st_mtime > STALE_TEMP_S:
                    stale.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def load(
        self, key: str, parts: dict, steps: int, offsets: list[int], shape: tuple, dtype: torch.dtype
    ) -> Checkpoint | None:
        """The checkpoint of this render, or None (logged) when there is none or it cannot be trusted."""
        path = self.path(key)
        if not path.is_file():
            self._explain_miss(parts)
            return None
        try:
            return self._read(path, key, steps, offsets, tuple(shape), dtype)
        except ResumeRefused as refused:
            log.warning("X-NeMo resume: refusing checkpoint %s: %s; the render starts at step 0", path, refused)
            return None

    def _read(
        self, path: Path, key: str, steps: int, offsets: list[int], shape: tuple, dtype: torch.dtype
    ) -> Checkpoint:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                if meta.get("format") != FORMAT:
                    raise ResumeRefused(f"not an X-NeMo resume checkpoint (format {meta.get('format')!r})")
                if meta.get("key") != key:
                    raise ResumeRefused("it belongs to a render with other inputs (its key differs)")
                if names != {"latent", "rng"}:
                    raise ResumeRefused(f"unexpected tensors {sorted(names)}")
                latent, rng = f.get_tensor("latent"), f.get_tensor("rng")
        except ResumeRefused:
            raise
        except Exception as err:  # safetensors' own header/length checks: truncated, garbage, not safetensors
            raise ResumeRefused(f"the file is damaged or not safetensors ({type(err).__name__}: {err})") from None
        step = int(meta.get("step", "-1")) if meta.get("step", "").isdigit() else -1
        if meta.get("steps") != str(steps) or not 0 < step < steps:
            raise ResumeRefused(f"step {meta.get('step')!r} of {meta.get('steps')!r} does not fit {steps} steps")
        if meta.get("offsets") != json.dumps([int(o) for o in offsets]):
            raise ResumeRefused("its window offsets differ from this render's")
        if tuple(latent.shape) != shape or latent.dtype != dtype:
            raise ResumeRefused(f"latent {tuple(latent.shape)} {latent.dtype}, expected {shape} {dtype}")
        if rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise ResumeRefused(f"RNG state {tuple(rng.shape)} {rng.dtype} is not torch's")
        if tensor_digest(latent) != meta.get("latent_sha256"):
            raise ResumeRefused("the latent's checksum does not match (damaged file)")
        if tensor_digest(rng) != meta.get("rng_sha256"):
            raise ResumeRefused("the RNG state's checksum does not match (damaged file)")
        return Checkpoint(step=step, latent=latent, rng=rng)

    def _explain_miss(self, parts: dict) -> None:
        """No checkpoint for this key: say which inputs changed, if a checkpoint of a similar render exists."""
        best: tuple[int, list[str]] | None = None
        for other in self.files():
            try:
                with safe_open(str(other), framework="pt", device="cpu") as f:
                    theirs = json.loads((f.metadata() or {}).get("parts", "{}"))
            except Exception:
                continue
            changed = sorted(n for n in parts if theirs.get(n) != parts[n])
            if changed and (best is None or len(changed) < best[0]):
                best = (len(changed), changed)
        if best is not None and best[0] <= 3:
            log.info(
                "X-NeMo resume: a checkpoint of a render with other inputs (changed: %s) is not used; the render "
                "starts at step 0",
                ", ".join(best[1]),
            )


class ResumeRefused(ValueError):
    """A checkpoint that must not be used (damaged, foreign, another render's)."""


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ResumeOptions:
    """What the node hands to sampling: where checkpoints go, and who hears about a resume."""

    store: CheckpointStore
    on_resume: Callable[[int, int], None] | None = None  # (finished steps, total steps)


class ResumableRun:
    """One render's checkpointing: wraps the sampler to run step by step and writes a checkpoint after each step."""

    def __init__(self, options: ResumeOptions, key: str, parts: dict, steps: int, offsets: list[int]):
        self.options = options
        self.key = key
        self.parts = parts
        self.steps = steps
        self.offsets = list(offsets)

    @classmethod
    def start(cls, options, sampler_name, model, positive, negative, latent, noise, sigmas, offsets, settings):
        """A run for this render, or None when the sampler cannot resume exactly (logged)."""
        if sampler_name not in RESUMABLE:
            log.info(
                "X-NeMo resume: sampler %r keeps state from step to step (history, its own noise or adaptive steps) "
                "that a checkpoint cannot restore exactly, so this render is not checkpointed; a cancelled render "
                "starts over (resumable: %s)",
                sampler_name,
                ", ".join(RESUMABLE),
            )
            return None
        parts = render_parts(model, positive, negative, latent, noise, sigmas, offsets, settings)
        key = key_of(parts)
        return cls(options, key, parts, len(sigmas) - 1, offsets)

    def wrap(self, sampler):
        """A KSAMPLER that runs `sampler`'s function one sigma interval at a time, from the checkpoint if any."""
        inner = sampler.sampler_function
        run = self

        def stepwise(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
            start, x = run._restore(x)
            for i in range(start, len(sigmas) - 1):
                shifted = None if callback is None else (lambda d, i=i: callback({**d, "i": d["i"] + i}))
                args = dict(extra_args) if extra_args is not None else None  # some samplers edit model_options
                x = inner(model, x, sigmas[i : i + 2], extra_args=args, callback=shifted, disable=True, **options)
                run._finished(i + 1, x)
            return x

        return comfy.samplers.KSAMPLER(stepwise, sampler.extra_options, sampler.inpaint_options)

    def _restore(self, x: torch.Tensor) -> tuple[int, torch.Tensor]:
        found = self.options.store.load(self.key, self.parts, self.steps, self.offsets, x.shape, x.dtype)
        if found is None:
            log.info("X-NeMo resume: no checkpoint for this render (key %s); starting at step 0", self.key[:12])
            return 0, x
        torch.set_rng_state(found.rng)
        log.info(
            "X-NeMo resume: resuming at step %d of %d from %s",
            found.step,
            self.steps,
            self.options.store.path(self.key),
        )
        if self.options.on_resume is not None:
            self.options.on_resume(found.step, self.steps)
        return found.step, found.latent.to(device=x.device, dtype=x.dtype)

    def _finished(self, done: int, x: torch.Tensor) -> None:
        if done < self.steps:
            self.options.store.save(self.key, self.parts, done, self.steps, x, self.offsets)
        else:
            self.options.store.remove(self.key)


# ---------------------------------------------------------------------------------------------------------------
# Time left
# ---------------------------------------------------------------------------------------------------------------


class StepClock:
    """Time left from the steps this run has done (a resumed run counts from where it resumed)."""

    def __init__(self, steps: int, windows_per_step: list[int], clock: Callable[[], float] = time.monotonic):
        self.steps = steps
        self.per_step = list(windows_per_step)
        self.clock = clock
        self.first = 0
        self.t0 = clock()

    def resumed(self, step: int) -> None:
        self.first = step
        self.t0 = self.clock()

    def windows_before(self, step: int) -> int:
        return sum(self.per_step[:step])

    def seconds_left(self, done: int) -> float | None:
        if done <= self.first:
            return None
        return (self.clock() - self.t0) / (done - self.first) * (self.steps - done)

    def line(self, done: int) -> str:
        left = self.seconds_left(done)
        eta = "" if left is None else f", about {_hms(left)} left"
        return f"X-NeMo: step {done}/{self.steps} done (windows {self.windows_before(done)}/{sum(self.per_step)}){eta}"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
