#!/usr/bin/env python
"""X-NeMo for ComfyUI against the official pipeline: the same work, side by side, in one invocation (issue 13).

A benchmark script, never a test and never run in CI. It needs the official code and its own virtual environment
(`bash benchmarks/setup_official.sh`, see benchmarks/README.md). Per configuration and round it runs the official
pipeline and this pack in separate processes, alternating which goes first, on:
- the same tiny official-format weights (made with the official classes by `setup_official.sh`),
- the same inputs (224 px driving crops, f_rts, reference latent, CLIP embedding, start noise, window offsets),
- the same thread count, fp32, 5 DDIM steps, guidance 2.5, 24-frame windows overlapping by 4.
VAE and CLIP are out of scope on both sides. Each process loads, warms up once (one step, one window), then times one
whole call and reports per stage: motion tokens, reference bank, UNet (per step), sampling overhead (everything
else), total, and peak RSS. Ratios are pack / official from the same round; the final latents of both are compared.

    .venv/bin/python benchmarks/side_by_side.py                       # both configurations, 2 rounds
    .venv/bin/python benchmarks/side_by_side.py --configs 12x5 --rounds 1 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import importlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from profiling import add, add_ranges, profiled  # noqa: E402

OFFICIAL_DIR = Path(os.environ.get("XNEMO_OFFICIAL_DIR") or ROOT / "benchmarks" / ".official")
LATENT_SCALE = 0.18215
CONTEXT, OVERLAP, GUIDANCE = 24, 4, 2.5
GiB = 1024**3
DEFAULTS = {"configs": "12x5,45x5", "rounds": 2, "size": "128"}
PRESETS = {
    # The shapes users run (issue 21): tiny weights measure per-call overhead, these the convolutions, linear layers
    # and attention. Each side needs about 11-12 GiB of RAM in fp32.
    "official-size": {"weights": "weights-official-size", "configs": "8x2,24x2", "rounds": 1, "size": "128,256"},
}


# ---------------------------------------------------------------------------------------------------------------
# Shared inputs
# ---------------------------------------------------------------------------------------------------------------


def make_inputs(path: Path, frames: int, steps: int, size: int, seed: int = 7) -> None:
    """Deterministic inputs for both sides: smooth random 224 px driving crops (uint8, as the official pipeline's PIL
    crops), a reference motion crop, f_rts near [0, 0, 1], a VAE latent mean, a CLIP embedding, start noise in the
    official layout [1, 4, F, h, w] and one window offset per step."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    h = w = size // 8
    base = torch.rand(1, 3, 14, 14, generator=g)
    drift = torch.cumsum(0.05 * torch.randn(frames, 3, 14, 14, generator=g), 0)
    crops = F.interpolate((base + drift).clamp(0, 1), size=(224, 224), mode="bilinear", align_corners=False)
    ref = F.interpolate(torch.rand(1, 3, 14, 14, generator=g), size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.randn(1, 4, h, w, generator=g) * 5
    save_file(
        {
            "driving_crops_u8": (crops * 255).round().to(torch.uint8).contiguous(),
            "ref_crop_u8": (ref[0] * 255).round().to(torch.uint8).contiguous(),
            "latent_mean": mean,
            "ref_latent": mean * LATENT_SCALE,  # the official pipeline's `latent_dist.mean * 0.18215`, same float32 op
            "clip_embed": torch.randn(1, 1, 768, generator=g),
            "bbox_params": torch.tensor([0.0, 0.0, 1.0]).repeat(frames, 1) + 0.02 * torch.randn(frames, 3, generator=g),
            "noise": torch.randn(1, 4, frames, h, w, generator=g),
            "offsets": torch.randint(0, CONTEXT, (steps,), generator=g),
        },
        str(path),
    )


# ---------------------------------------------------------------------------------------------------------------
# Memory (the official worker measures the same way)
# ---------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Trim freed heap, reset VmHWM to the current RSS (Linux clear_refs 5); returns the RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


# ---------------------------------------------------------------------------------------------------------------
# The pack's worker (runs in this repository's venv)
# ---------------------------------------------------------------------------------------------------------------


def _import_pack(pack_root: Path, device: str = "cpu"):
    """ComfyUI in-process (--cpu without a GPU) and the pack as package `xnemo_pack`, as tests/conftest.py does."""
    comfy_dir = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui").resolve()
    sys.path.insert(0, str(comfy_dir))
    import torch
    from comfy.cli_args import args

    if device == "cpu" or not torch.cuda.is_available():
        args.cpu = True
    spec = importlib.util.spec_from_file_location(
        "xnemo_pack", pack_root / "__init__.py", submodule_search_locations=[str(pack_root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["xnemo_pack"] = module
    spec.loader.exec_module(module)

    def room(*names):  # the engine's module layout before and after issue 15's restructure
        for name in names:
            with contextlib.suppress(ModuleNotFoundError):
                return importlib.import_module(f"xnemo_pack.xnemo_core.{name}")
        raise ModuleNotFoundError(names[0])

    return (
        room("adapters.model", "model"),
        room("adapters.reference_bank", "reference"),
        room("adapters.sampling", "sampling"),
        room("adapters.unet_patch", "unet_patch"),
        room("adapters.unet_patch", "unet_patch"),
    )


SYNC = []  # torch.cuda.synchronize when timing a GPU run


def tic() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). CPU time is what to compare on shared cores: with 1 thread it is the
    work done, whatever other jobs took of the wall clock."""
    for sync in SYNC:
        sync()
    return time.perf_counter(), time.process_time()


def toc(t0: tuple[float, float]) -> list[float]:
    t1 = tic()
    return [t1[0] - t0[0], t1[1] - t0[1]]


class HookTimer:
    """Forward-hook stopwatch for one module; `log` keeps (timestep, [wall, cpu] seconds) per call."""

    def __init__(self, module):
        self.log = []
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs.get("timesteps")
        self._tag = round(float(t.reshape(-1)[0]), 3)
        self._t0 = tic()

    def _post(self, module, args, output):
        self.log.append((self._tag, toc(self._t0)))


def pack_worker(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    rss_torch = _status_kib("VmRSS") * 1024

    torch.set_num_threads(args.threads)
    model_room, reference_room, sampling, conditioning, _ = _import_pack(Path(args.pack_root).resolve(), args.device)
    cuda = args.device.startswith("cuda")
    rss_libraries = _status_kib("VmRSS") * 1024  # torch, ComfyUI and the pack
    if cuda:
        SYNC.append(torch.cuda.synchronize)
    weights = Path(args.weights)
    files = model_room.XNeMoFiles(
        **{
            n: str(weights / f"xnemo_{n}.pth")
            for n in ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")
        }
    )
    model, xnemo = model_room.load_xnemo(files, args.dtype)
    data = load_file(args.inputs)
    unet_timer = HookTimer(model.model.diffusion_model)
    if args.profile_out:
        kinds = {
            "MotionCrossAttention": "xnemo:site motion cross-attention",
            "TemporalAttention": "xnemo:site temporal",
        }
        add_ranges(model.model.diffusion_model, lambda n, m: "xnemo:UNet call (all)" if n == "" else None)
        for sites in model.get_additional_models_with_key(conditioning.KEY):
            add_ranges(sites.model, lambda n, m: kinds.get(type(m).__name__))
        add_ranges(xnemo.reference.model, lambda n, m: "xnemo:reference UNet" if n == "" else None)
        add_ranges(xnemo.motion.model, lambda n, m: "xnemo:motion encoder" if n == "" else None)
    extra = json.loads(args.pack_options or "{}")
    preset = extra.pop("preset", "custom")  # "draft": the pack's NOT official preview preset
    steps_run = []

    def call(frames: int, steps: int, noise, offsets):
        times = {}
        t0 = tic()
        crops = data["driving_crops_u8"][:frames].float() / 255 * 2 - 1
        tokens = xnemo.fuse(xnemo.encode_faces(crops), data["bbox_params"][:frames])
        ref_crop = data["ref_crop_u8"][None].float() / 255 * 2 - 1
        ref_tokens = xnemo.fuse(xnemo.encode_faces(ref_crop), torch.tensor([[0.0, 0.0, 1.0]]))
        times["motion"] = toc(t0)
        t1 = tic()
        bank = reference_room.compute_reference_bank(xnemo.reference, data["ref_latent"], data["clip_embed"])
        times["reference"] = toc(t1)
        t2 = tic()
        positive, negative = conditioning.xnemo_conditioning(data["clip_embed"], bank, tokens, ref_tokens)
        blurred = sampling.blurred_reference(data["ref_latent"], frames)
        settings = sampling.SampleSettings(
            **{
                "steps": steps,
                "cfg": GUIDANCE,
                "context_length": CONTEXT,
                "context_overlap": OVERLAP,
                "closed_loop": True,
                **extra,
            }
        )
        if preset != "custom":
            settings = sampling.apply_preset(settings, preset)
        steps_run.append(settings.steps)
        latents = sampling.sample_animation(
            model, positive, negative, blurred / LATENT_SCALE, settings, noise=noise, offsets=offsets
        )
        times["sampling"] = toc(t2)
        times["total"] = toc(t0)
        return latents * LATENT_SCALE, times

    with torch.no_grad():
        t0 = tic()
        warm_frames = min(args.frames, CONTEXT)
        call(warm_frames, 1, torch.randn(warm_frames, 4, *data["ref_latent"].shape[-2:]), [0])
        warmup = toc(t0)
        unet_timer.log.clear()
        load_before = os.getloadavg()[0]
        base = _reset_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        noise = data["noise"][0, :, : args.frames].permute(1, 0, 2, 3).contiguous()  # official [1,C,F,h,w] -> [F,C,h,w]
        with profiled(args.profile_out):
            final, times = call(args.frames, args.steps, noise, data["offsets"][: args.steps].tolist())
        extra["preset"] = preset
        peak = _status_kib("VmHWM") * 1024
        gpu_peak = torch.cuda.max_memory_allocated() if cuda else None

    per_step, windows = {}, {}
    for t, dt in unet_timer.log:
        per_step[t] = add(per_step.get(t, [0.0, 0.0]), dt)
        windows[t] = windows.get(t, 0) + 1
    unet_total = [sum(v[i] for v in per_step.values()) for i in (0, 1)]
    report = {
        "side": "pack",
        "frames": args.frames,
        "steps": steps_run[-1],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "warmup": warmup,
        **times,
        "motion_calls": 2,
        "unet": unet_total,
        "unet_calls": len(unet_timer.log),
        "unet_per_step": [per_step[t] for t in sorted(per_step, reverse=True)],
        "windows_per_step": [windows[t] for t in sorted(windows, reverse=True)],
        "overhead": [times["total"][i] - times["motion"][i] - times["reference"][i] - unet_total[i] for i in (0, 1)],
        "peak_rss_bytes": peak,
        "rss_before_run_bytes": base,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "options": extra,
        "device": args.device,
        "dtype": args.dtype,
        "gpu_peak_bytes": gpu_peak,
        "rss_torch_bytes": rss_torch,
        "rss_libraries_bytes": rss_libraries,
    }
    save_file({"latents": final.float().cpu().permute(1, 0, 2, 3).unsqueeze(0).contiguous()}, args.latents_out)
    Path(args.report).write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------------------------------


def run_side(side: str, args, work: Path, inputs: Path, frames: int, steps: int, tag: str) -> dict:
    report, latents = work / f"{tag}.json", work / f"{tag}.safetensors"
    common = [
        "--weights",
        str(args.weights),
        "--inputs",
        str(inputs),
        "--frames",
        str(frames),
        "--steps",
        str(steps),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--report",
        str(report),
        "--latents-out",
        str(latents),
        *(["--profile-out", str(work / f"{tag}.profile.txt")] if args.profile else []),
    ]
    if side == "official":
        cmd = [
            str(args.official_python),
            str(ROOT / "benchmarks" / "official_worker.py"),
            "--official-dir",
            str(args.official_dir),
            "run",
            *common,
        ]
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "pack",
            "--pack-root",
            str(args.pack_root),
            *common,
        ]
        if args.pack_options:
            cmd += ["--pack-options", args.pack_options]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(report.read_text())
    out["latents_file"] = str(latents)
    if args.profile:
        out["profile"] = (work / f"{tag}.profile.txt").read_text()
    return out


UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}


def compare_latents(a: dict, b: dict, dtype: str = "fp32") -> tuple[float, float]:
    from safetensors.torch import load_file

    x, y = load_file(a["latents_file"])["latents"], load_file(b["latents_file"])["latents"]
    err = (x.float() - y.float()).abs().max().item()
    absmax = y.abs().max().item()
    if dtype in UNIT_ROUNDOFF:  # tests/comfy/test_half_precision.py's bound: 16 unit roundoffs x absmax
        return err, 16 * UNIT_ROUNDOFF[dtype] * absmax
    # The parity suite's clip tolerance (fixture manifests): atol 2e-3, or 5e-5 x absmax of the latents.
    return err, max(2e-3, 5e-5 * absmax)


def table(off: dict, ours: dict) -> list[str]:
    """Per stage: wall seconds (what a user waits on these shared cores) and CPU seconds (the work done: the
    contention-robust figure with 1 thread), official and pack, and pack / official for each."""

    def ratio(a, b):
        return f"{b / a:5.2f}x" if a else "  n/a"

    def row(name, a, b):
        return (
            f"| {name:<36} | {a[0]:8.2f} | {b[0]:8.2f} | {ratio(a[0], b[0])} "
            f"| {a[1]:8.2f} | {b[1]:8.2f} | {ratio(a[1], b[1])} |"
        )

    def per_step(x, side):
        return [v / side["steps"] for v in x]

    def fastest(x):
        return [min(v[i] for v in x) for i in (0, 1)]

    def mem(name, a, b):
        return f"| {name:<36} | {a / GiB:8.2f} | {b / GiB:8.2f} | {ratio(a, b)} | | | |"

    ours_step = per_step([ours["unet"][i] + ours["overhead"][i] for i in (0, 1)], ours)
    return [
        "| stage (seconds; memory GiB) | official wall | pack wall | pack/off | official CPU | pack CPU | pack/off |",
        "|---|---|---|---|---|---|---|",
        row(
            f"motion tokens ({off['motion_calls']} vs {ours['motion_calls']} encoder calls)",
            off["motion"],
            ours["motion"],
        ),
        row("reference bank", off["reference"], ours["reference"]),
        row("UNet per step (mean)", per_step(off["unet"], off), per_step(ours["unet"], ours)),
        row("UNet per step (fastest step)", fastest(off["unet_per_step"]), fastest(ours["unet_per_step"])),
        row("denoising step (pack: UNet+overhead)", per_step(off["unet"], off), ours_step),
        row("sampling overhead (whole run)", off["overhead"], ours["overhead"]),
        row("total", off["total"], ours["total"]),
        mem("peak RSS during the run", off["peak_rss_bytes"], ours["peak_rss_bytes"]),
        mem(
            "RSS growth during the run",
            off["peak_rss_bytes"] - off["rss_before_run_bytes"],
            ours["peak_rss_bytes"] - ours["rss_before_run_bytes"],
        ),
        *(
            [
                mem(
                    "peak RSS above the imported libraries",
                    off["peak_rss_bytes"] - off["rss_libraries_bytes"],
                    ours["peak_rss_bytes"] - ours["rss_libraries_bytes"],
                ),
                mem("RSS of `import torch` alone", off["rss_torch_bytes"], ours["rss_torch_bytes"]),
            ]
            if "rss_libraries_bytes" in off and "rss_libraries_bytes" in ours
            else []
        ),
        *(
            [mem("GPU peak allocated", off["gpu_peak_bytes"], ours["gpu_peak_bytes"])]
            if off.get("gpu_peak_bytes") is not None and ours.get("gpu_peak_bytes") is not None
            else []
        ),
    ]


def orchestrate(args) -> None:
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def say(line=""):  # printed and appended as it comes, so a long run that is stopped keeps its finished rounds
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    with tempfile.TemporaryDirectory(prefix="xnemo_sbs_") as tmp:
        work = Path(tmp)
        for size in args.sizes:
            make_inputs(
                work / f"inputs_{size}.safetensors", max(f for f, _ in configs), max(s for _, s in configs), size
            )
        say(f"# X-NeMo side by side, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
        say(f"command: {' '.join(shlex.quote(a) for a in [sys.executable.replace(str(ROOT) + '/', ''), *sys.argv])}")
        say(f"pack: {_git(args.pack_root)}; official: {args.official_dir} ({_official_commit(args.official_dir)})")
        say(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads} on both sides, "
            f"{args.device}, {args.dtype}, "
            f"{'/'.join(map(str, args.sizes))} px; weights {args.weights} ({_weights_note(args.weights)})"
        )
        say(f"load average at start: {os.getloadavg()[0]:.1f} (other jobs share these cores; compare within a round)")
        for size, (frames, steps) in ((size, c) for size in args.sizes for c in configs):
            inputs = work / f"inputs_{size}.safetensors"
            say()
            say(f"## {frames} frames, {steps} steps, {size} px, windows of {CONTEXT} overlapping {OVERLAP}")
            for r in range(args.rounds):
                order = ("official", "pack") if r % 2 == 0 else ("pack", "official")
                res = {
                    side: run_side(side, args, work, inputs, frames, steps, f"{side}_{size}_{frames}_{r}")
                    for side in order
                }
                off, ours = res["official"], res["pack"]
                err, tol = compare_latents(off, ours, args.dtype)
                say()
                say(
                    f"### round {r + 1} (order: {' then '.join(order)}; load average "
                    f"{off['loadavg_before']:.1f}/{ours['loadavg_before']:.1f} at the start of the timed runs)"
                )
                say(
                    f"windows per step: official {off['windows_per_step']}, pack {ours['windows_per_step']}; "
                    f"UNet calls {off['unet_calls']} vs {ours['unet_calls']}"
                )
                for line in table(off, ours):
                    say(line)
                say(
                    f"UNet per step (CPU s), official: {', '.join(f'{v[1]:.2f}' for v in off['unet_per_step'])}; "
                    f"pack: {', '.join(f'{v[1]:.2f}' for v in ours['unet_per_step'])}"
                )
                if ours.get("options", {}).get("preset", "custom") != "custom":
                    say(
                        f"pack preset {ours['options']['preset']!r} ({ours['steps']} steps, options "
                        f"{ours['options']}): NOT the official sampling, output not compared (max abs diff {err:.3g})"
                    )
                else:
                    say(
                        f"same output: final latents max abs diff {err:.3g} (parity tolerance {tol:.3g}): "
                        f"{'OK' if err <= tol else 'DIFFERENT'}"
                    )
                say(
                    f"throughput: pack {off['total'][0] / ours['total'][0]:.2f}x the official by wall clock, "
                    f"{off['total'][1] / ours['total'][1]:.2f}x by CPU time"
                )
                for side in order if args.profile else ():
                    say()
                    say(f"profile, {side} (timed call, self CPU time):")
                    say("```")
                    for line in res[side]["profile"].rstrip().splitlines():
                        say(line)
                    say("```")
        say()


def _git(path) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return rev[:72] + (" (+ uncommitted changes)" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return f"{path} (not a git checkout)"


def _official_commit(path) -> str:
    stamp = Path(path) / "COMMIT"
    return stamp.read_text().strip()[:12] if stamp.is_file() else "commit unknown"


def _weights_note(path) -> str:
    cfg = Path(path) / "bench_config.json"
    if not cfg.is_file():
        return "fixture set"
    c = json.loads(cfg.read_text())
    heads = c["motion_encoder_attention"]
    return f"UNet {c['unet2d']['block_out_channels']}, motion encoder attention {heads[0]}x{heads[1]}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--official-dir",
        type=Path,
        default=OFFICIAL_DIR,
        help="official checkout made by setup_official.sh (default $XNEMO_OFFICIAL_DIR or benchmarks/.official)",
    )
    p.add_argument("--official-python", type=Path, help="the official venv's python (default <official-dir>/venv)")
    p.add_argument("--weights", type=Path, help="official-format weights folder (default <official-dir>/weights)")
    p.add_argument("--pack-root", type=Path, default=ROOT, help="the pack checkout to time (default this one)")
    p.add_argument("--pack-options", help="JSON of extra SampleSettings fields for the pack (e.g. a preset)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="official-size: the official shapes (setup_official.sh --official-size), 8 and 24 frames x 2 steps at "
        "128 and 256 px, 1 round; options given explicitly win",
    )
    p.add_argument("--configs", help="FRAMESxSTEPS,... (default 12x5,45x5: 1 and 3 windows)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU run (both sides; wall time is the figure)")
    p.add_argument(
        "--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weights and compute dtype, both sides"
    )
    p.add_argument("--size", help="pixel size(s), comma-separated (latent = size / 8; default 128)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run torch.profiler over each timed call and print both sides' top ops (adds overhead: compare "
        "the ratios of a profiled run only with each other)",
    )
    p.add_argument("--out", help="append the report to this file too")
    p.add_argument("--worker", choices=["pack"], help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("--latents-out", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "pack":
        return pack_worker(args)
    preset = PRESETS[args.preset] if args.preset else {}
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, default))
    args.sizes = [int(v) for v in str(args.size).split(",")]
    args.official_dir = args.official_dir.resolve()
    args.official_python = args.official_python or args.official_dir / "venv" / "bin" / "python"
    args.weights = (args.weights or args.official_dir / preset.get("weights", "weights")).resolve()
    for what, path in (
        ("official venv python", args.official_python),
        ("weights", args.weights / "xnemo_motion_encoder.pth"),
    ):
        if not Path(path).exists():
            raise SystemExit(
                f"{what} not found at {path}: run `bash benchmarks/setup_official.sh` first "
                f"(or pass --official-dir / set XNEMO_OFFICIAL_DIR)"
            )
    orchestrate(args)


if __name__ == "__main__":
    main()
