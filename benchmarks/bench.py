#!/usr/bin/env python
"""X-NeMo for ComfyUI: speed and memory benchmark (GitHub issue 7). A script, not a test.

Drives the engine in-process exactly as the parity tests do (real ComfyUI from .comfyui/ or $COMFYUI_DIR, the pack
registered as package `xnemo_pack`, ComfyUI told --cpu when there is no GPU) and prints, per configuration:
seconds per denoising step, frames per second end to end, peak memory (RSS delta on CPU, torch.cuda peak on GPU) and
how they grow with frame count and resolution; plus the fast paths (motion tokens once per clip, reference bank once
per run, CFG rows batched, attention backend, fp16/bf16 weights, VAE decode chunking, torch.compile).

    .venv/bin/python benchmarks/bench.py                          # CPU, tiny fixture weights (see benchmarks/README.md)
    .venv/bin/python benchmarks/bench.py --full-size --weight-dtype fp16   # GPU, full-size random weights, 512 px

Nothing here changes the engine: alternative attention backends are swapped in for a measurement and restored.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import importlib.util
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui").resolve()
FIXTURE_DIR = Path(os.environ.get("XNEMO_FIXTURE_DIR") or ROOT.parent / "shared" / "fixtures" / "xnemo_tiny").resolve()
ROLES = ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")
MiB = 1024**2
COMFY_ATTENTION: list[str] = []

# Issue 7's figures for the official pipeline (45 frames, 3 windows, 5 steps, tiny weights, 2 CPU threads).
OFFICIAL_S_PER_STEP = 22.6
OFFICIAL_MOTION_SHARE = 0.67


# ---------------------------------------------------------------------------------------------------------------
# Set-up: ComfyUI in-process, the pack as `xnemo_pack` (as tests/conftest.py does)
# ---------------------------------------------------------------------------------------------------------------


def setup(force_cpu: bool) -> None:
    for path in (COMFYUI_DIR, ROOT / "scripts"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import torch
    from comfy.cli_args import args

    if force_cpu or not torch.cuda.is_available():
        args.cpu = True
    if "xnemo_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "xnemo_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["xnemo_pack"] = module
        spec.loader.exec_module(module)


def out(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _reset_rss_peak() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the next baseline is honest


class Peak:
    """Peak memory of a block: RSS high-water mark minus RSS at entry (CPU), and torch.cuda's peak (GPU)."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"
        self.rss_delta = self.cuda_peak = self.cuda_delta = None

    def __enter__(self):
        _trim()
        self.exact = _reset_rss_peak()
        self.base = rss_bytes()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.cuda_base = self.torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.cuda_peak = self.torch.cuda.max_memory_allocated()
            self.cuda_delta = self.cuda_peak - self.cuda_base
        hwm = _status_kib("VmHWM")
        peak = (
            hwm * 1024
            if (hwm is not None and self.exact)
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        self.rss_delta = max(0, peak - self.base)
        return False

    def text(self) -> str:
        s = f"RSS +{self.rss_delta / MiB:.1f} MiB"
        if not self.exact:
            s += " (process-lifetime peak: /proc/self/clear_refs unavailable)"
        if self.cuda:
            s += f", CUDA peak {self.cuda_peak / MiB:.0f} MiB (+{self.cuda_delta / MiB:.0f} over resident)"
        return s


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------


def sd15_shape():
    from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt

    # The official denoising/reference UNet: sd-image-variations (SD1.5 topology), 320 x (1, 2, 4, 4), 2 res blocks.
    return ckpt.UNetShape(
        model_channels=320,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        context_dim=768,
        in_channels=4,
        attention_levels=(True, True, True, False),
        has_output=True,
    )


def site_channels(shape) -> list[int]:
    from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt

    return ckpt.site_channels(shape)


def count_full_size_parameters() -> dict[str, int]:
    """Parameter counts of the official-shape modules, built on the meta device (no memory)."""
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from xnemo_pack.xnemo_core.pure.layers import XNeMoSites
    from xnemo_pack.xnemo_core.pure.motion_encoder import MotionEncoder

    shape = sd15_shape()

    def n(module, skip=()):
        return sum(p.numel() for name, p in module.named_parameters() if not name.startswith(skip))

    with torch.device("meta"):
        unet = UNetModel(**shape.comfy_config(), dtype=torch.float32, operations=comfy.ops.disable_weight_init)
        sites = XNeMoSites(site_channels(shape))
        encoder = MotionEncoder()
    motion = sum(p.numel() for s in sites.sites for p in s.motion.parameters())
    temporal = sum(p.numel() for s in sites.sites for p in s.temporal.parameters())
    return {
        "unet_2d": n(unet),
        "motion_sites": motion,
        "temporal_sites": temporal,
        "reference_unet": n(unet, ("out.",)),
        "motion_encoder": n(encoder),
    }


def write_full_size_xnemo(folder: Path, seed: int = 0) -> None:
    """Random weights with the official shapes, in the official file format (fp16 safetensors), via the same
    builders demo_weights uses for the tiny set; they then load through load_xnemo like the released files."""
    import make_tiny_weights as demo_weights
    import safetensors.torch
    import torch

    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES
    from xnemo_pack.xnemo_core.pure.motion_encoder import MotionEncoder

    folder.mkdir(parents=True, exist_ok=True)
    shape = sd15_shape()
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    denoising = demo_weights.tiny_unet_state_dict(shape, g)
    motion, temporal = demo_weights.tiny_site_state_dicts(shape, g)
    files = {"denoising_unet": {**denoising, **motion}, "temporal_module": temporal}
    del denoising, motion, temporal
    reference = demo_weights.tiny_unet_state_dict(shape, g)
    files["reference_unet"] = {k: v for k, v in reference.items() if not k.startswith(("conv_norm_out.", "conv_out."))}
    del reference
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        files["motion_encoder"] = MotionEncoder().state_dict()  # official 8 heads x 128
    for role, sd in files.items():
        half = {
            k: (v.half() if v.is_floating_point() and not k.endswith("pe") else v).contiguous() for k, v in sd.items()
        }
        safetensors.torch.save_file(half, str(folder / f"{CHECKPOINT_FILES[role]}.safetensors"))
    out(f"wrote full-size random weights to {folder} in {time.perf_counter() - t0:.0f} s")


def weight_files(args) -> tuple[list[str], str]:
    import make_tiny_weights as demo_weights

    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

    if args.full_size:
        folder = Path(args.weights_dir or Path(tempfile.gettempdir()) / "xnemo_full_size_random")
        paths = [folder / f"{CHECKPOINT_FILES[r]}.safetensors" for r in ROLES]
        if not all(p.is_file() for p in paths):
            write_full_size_xnemo(folder)
        return [str(p) for p in paths], f"full-size random weights (official shapes) in {folder}"
    fixture = Path(args.fixture)
    paths = [fixture / f"xnemo_{r}.pth" for r in ROLES]
    if all(p.is_file() for p in paths):
        return [str(p) for p in paths], f"tiny fixture {fixture}"
    folder = Path(tempfile.gettempdir()) / "xnemo_tiny_random"
    names = demo_weights.write_tiny_xnemo(folder)
    return [
        str(folder / names[r]) for r in ROLES
    ], f"tiny random weights from demo_weights in {folder} (fixture absent)"


# ---------------------------------------------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------------------------------------------


class UNetCalls:
    """DIFFUSION_MODEL wrapper counting UNet calls and the rows (latent frames) each call carries."""

    KEY = "xnemo_bench_counter"

    def __init__(self):
        self.calls, self.rows, self.kinds = 0, [], []

    def reset(self):
        self.calls, self.rows, self.kinds = 0, [], []

    def __call__(self, executor, x, *args, **kwargs):
        self.calls += 1
        self.rows.append(int(x.shape[0]))
        self.kinds.append(tuple(args[4].get("cond_or_uncond", ())) if len(args) > 4 else ())
        return executor(x, *args, **kwargs)


@contextlib.contextmanager
def attention_backend(name: str):
    """Swap the attention function the UNet (comfy) and the X-NeMo sites use; 'comfy' keeps ComfyUI's choice."""
    import comfy.ldm.modules.attention as attention

    from xnemo_pack.xnemo_core.adapters import unet_patch

    saved = (attention.optimized_attention, unet_patch.optimized_attention)
    if name != "comfy":
        fn = getattr(attention, f"attention_{name}")
        attention.optimized_attention = fn
        unet_patch.optimized_attention = fn
    try:
        yield
    finally:
        attention.optimized_attention, unet_patch.optimized_attention = saved


class Bench:
    def __init__(self, args):
        import comfy.model_management as mm
        import comfy.patcher_extension
        import torch

        from xnemo_pack.xnemo_core.adapters import model as xmodel

        self.args, self.torch, self.mm = args, torch, mm
        self.device = mm.get_torch_device()
        paths, self.weights_desc = weight_files(args)
        t0 = time.perf_counter()
        self.model, self.xnemo = xmodel.load_xnemo(xmodel.XNeMoFiles(**dict(zip(ROLES, paths))), args.weight_dtype)
        self.load_s = time.perf_counter() - t0
        self.counter = UNetCalls()
        self.model = self.model.clone()
        self.model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, UNetCalls.KEY, self.counter)
        if args.compile:
            from comfy_api.torch_helpers import set_torch_compile_wrapper

            set_torch_compile_wrapper(self.model, backend="inductor")
        self.banks = {}
        g = torch.Generator().manual_seed(0)
        self.crops = torch.rand(max(args.motion_batch, 8), 3, 224, 224, generator=g) * 2 - 1
        self.tokens = self.xnemo.fuse(self.xnemo.encode_faces(self.crops[:8]), torch.zeros(8, 3))
        self.ref_tokens = self.tokens[:1]

    # -- helpers ---------------------------------------------------------------------------------------------------

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn, repeat: int):
        best, result = float("inf"), None
        for _ in range(repeat):
            self.sync()
            t0 = time.perf_counter()
            result = fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best, result

    def reference_inputs(self, px: int):
        """(scaled reference latent, CLIP embedding, bank) for a px x px clip; the bank is computed once per size."""
        from xnemo_pack.xnemo_core.adapters import reference_bank as reference

        if px not in self.banks:
            g = self.torch.Generator().manual_seed(px)
            latent = self.torch.randn(1, 4, px // 8, px // 8, generator=g)
            clip = self.torch.randn(1, 1, 768, generator=g)
            self.banks[px] = (latent, clip, reference.compute_reference_bank(self.xnemo.reference, latent, clip))
        return self.banks[px]

    def fresh_bank(self, px: int):
        """The reference bank computed again (timing the once-per-run ReferenceNet pass)."""
        from xnemo_pack.xnemo_core.adapters import reference_bank as reference

        latent, clip, _ = self.reference_inputs(px)
        return reference.compute_reference_bank(self.xnemo.reference, latent, clip)

    def conditioning(self, px: int, frames: int, shared_bank: bool = True):
        from xnemo_pack.xnemo_core.adapters import sampling, unet_patch
        from xnemo_pack.xnemo_core.pure.constants import LATENT_SCALE

        latent, clip, bank = self.reference_inputs(px)
        tokens = self.tokens[self.torch.arange(frames) % self.tokens.shape[0]]
        positive, negative = unet_patch.xnemo_conditioning(clip, bank, tokens, self.ref_tokens)
        if not shared_bank:  # another bank object: CONDConstant no longer matches, so ComfyUI cannot batch the rows
            import comfy.conds

            other = unet_patch.ReferenceBank(bank.blocks, bank.latent_hw)
            negative[0][1]["model_conds"][unet_patch.BANK_COND] = comfy.conds.CONDConstant(other)
        return positive, negative, sampling.blurred_reference(latent, frames) / LATENT_SCALE

    def sample(self, px: int, frames: int, steps: int, shared_bank: bool = True) -> dict:
        """One sampling run: per-step wall times, total, peak memory, UNet calls."""
        from xnemo_pack.xnemo_core.adapters import sampling

        positive, negative, start = self.conditioning(px, frames, shared_bank)
        settings = sampling.SampleSettings(
            steps=steps, seed=0, context_length=self.args.context_length, context_overlap=self.args.context_overlap
        )
        stamps, window_stamps = [], []

        def callback(i, x0, x, total):
            self.sync()
            stamps.append(time.perf_counter())

        def on_window(done, _):
            self.sync()
            window_stamps.append(time.perf_counter())

        self.counter.reset()
        with Peak(self.torch, self.device) as peak:
            self.sync()
            t0 = time.perf_counter()
            latents = sampling.sample_animation(
                self.model, positive, negative, start, settings, callback=callback, on_window=on_window
            )
            self.sync()
            total = time.perf_counter() - t0
        steps_s = [b - a for a, b in zip([t0] + stamps, stamps)]
        # Window k of a step starts at the previous window's end, or at the previous step's end for the first one.
        starts = sorted([t0] + stamps[:-1] + window_stamps[:-1])
        windows_s = [w - max(t for t in starts if t < w) for w in window_stamps]
        windows = len(sampling.context_windows(frames, settings.context_length, settings.context_overlap))
        del latents
        return dict(
            steps=steps_s,
            windows_s=windows_s,
            total=total,
            peak=peak,
            calls=self.counter.calls,
            rows=list(self.counter.rows),
            windows=windows,
        )

    def sample_repeated(self, px, frames, steps, repeat, **kw) -> dict:
        runs = [self.sample(px, frames, steps, **kw) for _ in range(repeat)]
        all_steps = [s for r in runs for s in r["steps"]]
        all_windows = [s for r in runs for s in r["windows_s"]]
        return dict(
            runs=runs,
            step_min=min(all_steps),
            step_median=statistics.median(all_steps),
            window_min=min(all_windows),
            window_median=statistics.median(all_windows),
            window_count=len(all_windows),
            total_min=min(r["total"] for r in runs),
            peak_max=max(r["peak"].rss_delta for r in runs),
            cuda_peak=max((r["peak"].cuda_peak or 0) for r in runs),
            cuda_delta=max((r["peak"].cuda_delta or 0) for r in runs),
            windows=runs[0]["windows"],
            calls=runs[0]["calls"],
            rows=runs[0]["rows"],
        )

    def motion_encoder_seconds(self, frames: int, repeat: int) -> float:
        crops = self.crops[self.torch.arange(frames) % self.crops.shape[0]]
        best, _ = self.timed(lambda: self.xnemo.encode_faces(crops, batch=self.args.motion_batch), repeat)
        return best

    def latent_bytes(self, px: int, frames: int) -> int:
        return frames * 4 * (px // 8) ** 2 * 4  # the sampled latent, float32


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------


def machine_info(args, bench) -> None:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out("=" * 100)
    out(f"X-NeMo for ComfyUI benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    out(f"command: {' '.join(sys.argv)}")
    out(
        f"machine: {platform.platform()}; CPU {cpu}, {os.cpu_count()} logical CPUs; torch threads "
        f"{torch.get_num_threads()}; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    out(f"python {platform.python_version()}, torch {torch.__version__}, ComfyUI at {COMFYUI_DIR}")
    if bench.device.type == "cuda":
        p = torch.cuda.get_device_properties(bench.device)
        out(f"GPU: {p.name}, {p.total_memory / 1024**3:.1f} GiB, CUDA {torch.version.cuda}")
    out(
        f"device {bench.device}; weights: {bench.weights_desc}; weight dtype {args.weight_dtype} -> "
        f"{bench.xnemo.precision.weight} (compute {bench.xnemo.precision.compute}); loaded in {bench.load_s:.1f} s"
    )
    out(
        f"attention: ComfyUI picked {COMFY_ATTENTION[0]}; this run uses "
        f"{'that' if args.attention == 'comfy' else 'attention_' + args.attention}; torch.compile "
        f"{'on (inductor)' if args.compile else 'off'}"
    )
    out(
        f"windows: context_length {args.context_length}, overlap {args.context_overlap}, closed loop; "
        f"timings are the minimum of >= {args.repeat} runs (per step: min and median over all steps of all runs)"
    )
    out("=" * 100)


def section_resolution_and_frames(args, bench) -> None:
    out("\n## Frame and resolution sweep (sampling: motion tokens and reference bank are ready-made inputs)")
    out(
        "frames and px: clip length and image size (latent = px/8); s/step: min / median wall time of one denoising "
        "step; s/window: min / median wall time of one window (UNet call incl. CFG rows), the contention-robust "
        "figure; fps: frames per second end to end for the steps run, and projected to "
        f"{args.project_steps} steps from the min s/window (+ motion encoder measured per frame + reference bank); "
        "memory: "
        "peak RSS over the process's RSS at the start of the run."
    )
    mot_per_frame = bench.motion_encoder_seconds(args.motion_batch, args.repeat) / args.motion_batch
    out(
        f"motion encoder: {mot_per_frame:.3f} s/frame (batch {args.motion_batch}, min of {args.repeat}); "
        f"encoded once per clip, so its cost is frames x that, whatever the steps and windows"
    )
    header = (
        f"{'px':>4} {'frames':>6} {'steps':>5} {'win/step':>8} {'UNet calls':>10} {'rows/call':>9} "
        f"{'runs':>4} {'s/step min':>10} {'median':>7} {'s/window min':>12} {'median':>7} {'fps(run)':>9} "
        f"{f'fps({args.project_steps} st)':>11} "
        f"{'peak mem':>20} {'latent':>9} {'mem/latent':>10}"
    )
    out(header)
    rows = []
    configs = [(px, args.frames[0]) for px in args.sizes] + [(args.sizes[0], f) for f in args.frames[1:]]
    for px, frames in configs:
        long = frames >= args.long_threshold or px != args.sizes[0]
        steps = args.long_steps if long else args.steps
        repeat = args.long_repeat if frames >= args.long_threshold else args.repeat
        bench.reference_inputs(px)
        bank_s, _ = bench.timed(lambda px=px: bench.fresh_bank(px), args.repeat)
        r = bench.sample_repeated(px, frames, steps, repeat)
        once = frames * mot_per_frame + bank_s
        fps_run = frames / (r["total_min"] + once)
        fps_proj = frames / (args.project_steps * r["windows"] * r["window_min"] + once)
        mem = r["cuda_peak"] if bench.device.type == "cuda" else r["peak_max"]
        mem_text = (
            f"{r['cuda_peak'] / MiB:.0f} MiB CUDA"
            if bench.device.type == "cuda"
            else f"+{r['peak_max'] / MiB:.1f} MiB RSS"
        )
        lat = bench.latent_bytes(px, frames)
        rows.append(
            dict(
                px=px,
                frames=frames,
                steps=steps,
                windows=r["windows"],
                step_min=r["step_min"],
                window_min=r["window_min"],
                step_median=r["step_median"],
                fps_run=fps_run,
                fps_proj=fps_proj,
                mem=mem,
                latent=lat,
                calls=r["calls"],
                rows=r["rows"],
            )
        )
        out(
            f"{px:>4} {frames:>6} {steps:>5} {r['windows']:>8} {r['calls']:>10} {max(r['rows']):>9} "
            f"{repeat:>4} {r['step_min']:>10.2f} {r['step_median']:>7.2f} {r['window_min']:>12.2f} "
            f"{r['window_median']:>7.2f} {fps_run:>9.3f} "
            f"{fps_proj:>11.4f} {mem_text:>20} {lat / MiB:>7.2f}Mi {mem / max(lat, 1):>10.1f}"
        )
    frame_rows = [r for r in rows if r["px"] == args.sizes[0]]
    if len(frame_rows) >= 2:
        a, b = frame_rows[0], frame_rows[-1]
        grow_mem, grow_lat = b["mem"] - a["mem"], b["latent"] - a["latent"]
        out(
            f"\nmemory vs frames at {a['px']} px: {a['frames']} -> {b['frames']} frames: peak "
            f"{a['mem'] / MiB:.1f} -> {b['mem'] / MiB:.1f} MiB ({grow_mem / MiB:+.1f} MiB) while the latent grows by "
            f"{grow_lat / MiB:.2f} MiB ({grow_mem / max(grow_lat, 1):.1f} x the latent growth)"
        )
        out(
            "time vs frames (min s/window; a step costs windows x this): "
            + ", ".join(f"{r['frames']} frames {r['window_min']:.2f}" for r in frame_rows)
        )
    if len(args.sizes) >= 2:
        r0, r1 = rows[0], rows[1]
        out(
            f"resolution: {r0['px']} -> {r1['px']} px ({(r1['px'] / r0['px']) ** 2:.2f}x pixels): s/step x"
            f"{r1['step_min'] / r0['step_min']:.1f}, peak memory x{r1['mem'] / max(r0['mem'], 1):.1f}"
        )


def section_window_overhead(args, bench) -> None:
    """The windowing bookkeeping alone (cond slicing, index_add, counts) with a stub UNet: must not grow per frame."""
    import comfy.conds

    from xnemo_pack.xnemo_core.adapters import sampling

    torch = bench.torch
    out("\n## Window bookkeeping without the UNet (WindowPlan.calc_cond_batch with a stub model call)")

    def conds(frames):
        def one():
            return {
                "model_conds": {
                    "xnemo_motion": comfy.conds.CONDRegular(torch.randn(frames, 32, 16)),
                    "xnemo_ref": comfy.conds.CONDRegular(torch.ones(frames, 1)),
                    "xnemo_bank": comfy.conds.CONDConstant(object()),
                    "c_crossattn": comfy.conds.CONDCrossAttn(torch.randn(1, 1, 768)),
                }
            }

        return [[one()], [one()]]

    def stub(model, c, x, t, options):
        return [torch.zeros_like(x) for _ in c]

    px = args.sizes[0]
    for frames in args.frames:
        best = float("inf")
        for _ in range(max(args.repeat, 3)):
            plan = sampling.WindowPlan(
                length=args.context_length, overlap=args.context_overlap, closed_loop=True, offsets=[5]
            )
            x = torch.randn(frames, 4, px // 8, px // 8)
            t = torch.full((frames,), 10.0)
            c = conds(frames)
            t0 = time.perf_counter()
            plan.calc_cond_batch(stub, None, c, x, t, {})
            best = min(best, (time.perf_counter() - t0) / max(plan.windows_run, 1))
        out(f"{frames} frames: {plan.windows_run} windows, {best * 1e3:.2f} ms per window of bookkeeping")


def section_official_schedule(args, bench) -> None:
    from xnemo_pack.xnemo_core.adapters import sampling

    frames, steps, px = 45, 5, 128
    run_steps = min(steps, args.official_run_steps)
    windows = len(sampling.context_windows(frames, args.context_length, args.context_overlap))
    out(
        f"\n## Official schedule comparison (issue 7 reference: {frames} frames, {windows} windows, {steps} steps, "
        f"{px} px, tiny weights, {bench.torch.get_num_threads()} threads)"
    )
    enc24 = bench.motion_encoder_seconds(args.context_length, args.repeat)
    enc_clip = bench.motion_encoder_seconds(frames, args.repeat)
    enc_ref = bench.motion_encoder_seconds(1, args.repeat)
    r = bench.sample_repeated(px, frames, run_steps, 1)
    step = windows * r["window_min"]
    official_enc = windows * steps * enc24 + enc_ref
    ours_enc = enc_clip + enc_ref
    out(
        f"motion encoder: {args.context_length} frames {enc24:.2f} s, {frames} frames {enc_clip:.2f} s, "
        f"1 frame (reference) {enc_ref:.2f} s (min of {args.repeat})"
    )
    out(
        f"per-window recomputation (official): {windows} windows x {steps} steps x {enc24:.2f} s = "
        f"{official_enc:.1f} s of motion encoder for the clip ({windows * enc24:.2f} s per step)"
    )
    out(
        f"once per clip (ours): {ours_enc:.2f} s for the clip ({ours_enc / steps:.2f} s per step over {steps} steps); "
        f"saving {official_enc - ours_enc:.1f} s, {official_enc / ours_enc:.1f}x less motion-encoder time"
    )
    out(
        f"our denoising step ({frames} frames, {windows} windows, {run_steps} steps run): {step:.2f} s "
        f"(= {windows} x min {r['window_min']:.2f} s/window; measured steps min {r['step_min']:.2f} s, median "
        f"{r['step_median']:.2f} s); {r['calls'] // run_steps} UNet calls per step of {max(r['rows'])} rows"
    )
    ours_total = steps * step + ours_enc
    official_like = steps * (step + windows * enc24) + enc_ref
    out(
        f"clip: ours {ours_total:.1f} s vs ours with per-window motion encoder {official_like:.1f} s "
        f"({official_like / ours_total:.2f}x); motion-encoder share of a step if recomputed: "
        f"{windows * enc24 / (step + windows * enc24):.0%} (issue: official {OFFICIAL_S_PER_STEP} s/step, "
        f"{OFFICIAL_MOTION_SHARE:.0%} motion encoder -> {OFFICIAL_S_PER_STEP * (1 - OFFICIAL_MOTION_SHARE):.1f} s "
        f"UNet + {OFFICIAL_S_PER_STEP * OFFICIAL_MOTION_SHARE:.1f} s encoder per step)"
    )


def section_fast_paths(args, bench) -> None:
    from xnemo_pack.xnemo_core.adapters import reference_bank as reference

    px, frames = args.sizes[0], args.context_length
    out(f"\n## Fast paths ({px} px, {frames} frames = one window, 1 step per run, min of {args.repeat})")

    # Reference bank: once per run, one row.
    latent, clip, bank = bench.reference_inputs(px)
    one, _ = bench.timed(lambda: reference.compute_reference_bank(bench.xnemo.reference, latent, clip), args.repeat)
    two, _ = bench.timed(
        lambda: reference.run_reference_unet(
            bench.xnemo.reference, latent.expand(2, -1, -1, -1), clip.expand(2, -1, -1)
        ),
        args.repeat,
    )
    bank_bytes = sum(t.numel() * t.element_size() for t in bank.blocks.values())
    out(
        f"reference bank: {one:.2f} s once per run (1 row; the official CFG-batched pass runs 2 rows: {two:.2f} s); "
        f"{len(bank.blocks)} entries, {bank_bytes / MiB:.2f} MiB fp16 kept on the CPU. Recomputing it per window "
        f"and step would add {one:.2f} s x windows x steps (e.g. {one * 12 * 35:.0f} s for 240 frames, 35 steps)"
    )

    # CFG rows batched.
    base = bench.sample_repeated(px, frames, 1, args.repeat)
    split = bench.sample_repeated(px, frames, 1, args.repeat, shared_bank=False)
    out(
        f"CFG batching: shared bank -> {base['calls']} UNet call(s) per window, rows {base['rows']}, "
        f"{base['step_min']:.2f} s/step; separate banks (rows cannot batch) -> {split['calls']} calls, rows "
        f"{split['rows']}, {split['step_min']:.2f} s/step ({split['step_min'] / base['step_min']:.2f}x)"
    )

    # Attention backend.
    if not args.skip_attention:
        import comfy.ldm.modules.attention as attention

        names = [n for n in args.attention_backends if hasattr(attention, f"attention_{n}")]
        runs = {n: [] for n in names}
        for _ in range(max(args.repeat, 2)):  # interleaved, so a burst of contention hits every backend alike
            for name in names:
                with attention_backend(name):
                    runs[name].append(bench.sample(px, frames, 1))
        best = {n: min(r["total"] for r in rs) for n, rs in runs.items()}
        peak = {
            n: max((r["peak"].cuda_peak if bench.device.type == "cuda" else r["peak"].rss_delta) for r in rs)
            for n, rs in runs.items()
        }
        ref = best.get("pytorch", best[names[0]])
        out(
            "attention (UNet attn1/attn2 and the 42 X-NeMo site attentions; runs interleaved, min of "
            f"{max(args.repeat, 2)}): "
            + "; ".join(
                f"{n} {best[n]:.2f} s/step ({best[n] / ref:.2f}x, all runs "
                f"{', '.join(format(r['total'], '.1f') for r in runs[n])}), {peak[n] / MiB:.0f} MiB peak"
                for n in names
            )
        )


def section_motion_encoder_memory(args, bench) -> None:
    out(f"\n## Motion encoder (once per clip, batches of {args.motion_batch} crops)")
    for frames in (args.motion_batch, 2 * args.motion_batch):
        with Peak(bench.torch, bench.device) as peak:
            s = bench.motion_encoder_seconds(frames, 1)
        out(f"{frames} frames: {s:.2f} s ({s / frames:.3f} s/frame), {peak.text()}")


def section_vae(args, bench) -> None:
    import comfy.sd
    import comfy.utils
    import make_tiny_weights as demo_weights

    out("\n## VAE decode (random full-size SD VAE; ComfyUI's VAE.decode splits the frames by free memory)")
    path = Path(tempfile.gettempdir()) / "xnemo_bench_random_sd_vae.safetensors"
    if not path.is_file():
        demo_weights.write_random_vae(path)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    for px, frames in args.vae:
        latent = bench.torch.randn(frames, 4, px // 8, px // 8)
        used = vae.memory_used_decode(latent.shape, vae.vae_dtype)
        bench.mm.load_models_gpu([vae.patcher], memory_required=used)
        chunk = max(1, int(bench.mm.get_free_memory(vae.device) / used))
        with Peak(bench.torch, bench.device) as peak:
            s, images = bench.timed(lambda latent=latent: vae.decode(latent), args.repeat)
        image_bytes = images.numel() * images.element_size()
        out(
            f"{px} px x {frames} frames: {s:.2f} s ({frames / s:.2f} frames/s), {peak.text()}; ComfyUI's chunk "
            f"{min(chunk, frames)} frames (estimate {used / MiB:.0f} MiB for all, "
            f"free {bench.mm.get_free_memory(vae.device) / MiB:.0f} MiB); "
            f"decoded IMAGE {image_bytes / MiB:.1f} MiB ({image_bytes / frames / MiB:.2f} MiB/frame, float32 on CPU)"
        )
        del images


def section_dtypes(args, bench_factory) -> None:
    out("\n## Weight dtype (Load X-NeMo weight_dtype)")
    for dtype in args.dtypes:
        b = bench_factory(dtype)
        params = sum(
            p.numel() * p.element_size()
            for pt in (b.model, b.xnemo.reference, b.xnemo.motion)
            for p in pt.model.parameters()
        )
        sites = b.model.get_additional_models_with_key("xnemo")[0].model
        params += sum(p.numel() * p.element_size() for p in sites.parameters())
        r = b.sample_repeated(b.args.sizes[0], b.args.context_length, 1, b.args.repeat)
        mem = r["cuda_peak"] if b.device.type == "cuda" else r["peak_max"]
        out(
            f"{dtype}: stored {b.xnemo.precision.weight}, compute {b.xnemo.precision.compute}; weights "
            f"{params / MiB:.1f} MiB; {r['step_min']:.2f} s/step "
            f"({b.args.context_length} frames, {b.args.sizes[0]} px); "
            f"peak {mem / MiB:.0f} MiB"
        )
        del b
        gc.collect()


def section_memory_plan(args) -> None:
    """What ComfyUI would reserve and load on 8-24 GB cards (issue 14): simulated, see scripts/memory_plan.py."""
    import memory_plan

    out(f"\n## Memory plan at {args.plan_size} px, fp16, simulated NVIDIA cards (scripts/memory_plan.py)")
    out(
        "ComfyUI's own planning (prepare_sampling -> memory_required -> load_models_gpu -> ModelPatcher.load) on "
        "full-size shapes on the meta device; 'before' drops the pack's per-window PREPARE_SAMPLING wrapper."
    )
    for row in memory_plan.table(args.plan_cards, args.plan_frames, args.plan_size, args.context_length):
        out(row)


def _load_files(folder: Path, channels: int) -> dict[str, Path]:
    """The four files in the official format (fp32 .pth, torch's zip format) with the UNets `channels` wide."""
    import make_tiny_weights as demo_weights
    import torch

    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES
    from xnemo_pack.xnemo_core.pure.motion_encoder import MotionEncoder

    paths = {role: folder / f"{stem}.pth" for role, stem in CHECKPOINT_FILES.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    shape = dataclasses.replace(sd15_shape(), model_channels=channels)
    g = torch.Generator().manual_seed(0)
    motion, temporal = demo_weights.tiny_site_state_dicts(shape, g)
    torch.save({**demo_weights.tiny_unet_state_dict(shape, g), **motion}, paths["denoising_unet"])
    torch.save(temporal, paths["temporal_module"])
    del motion, temporal
    reference = demo_weights.tiny_unet_state_dict(shape, g)
    torch.save(
        {k: v for k, v in reference.items() if not k.startswith(("conv_norm_out.", "conv_out."))},
        paths["reference_unet"],
    )
    del reference
    torch.save(MotionEncoder().state_dict(), paths["motion_encoder"])
    return paths


def load_child(folder: str, weight_dtype: str, before: bool) -> None:
    """In a fresh process: load_xnemo on `folder`, print peak RSS and peak anonymous memory over the load as JSON."""
    import json
    import threading

    import torch

    from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt
    from xnemo_pack.xnemo_core.adapters import model as xmodel
    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

    if before:  # the loader before issue 14: a private copy of each file, copied into separately allocated models
        ckpt._load_weights_only = lambda path: torch.load(str(path), map_location="cpu", weights_only=True)

        def copy_weights(module, sd):
            module.to_empty(device="cpu")
            module.load_state_dict(sd, strict=True)

        xmodel.assign_weights = copy_weights
    files = xmodel.XNeMoFiles(**{role: str(Path(folder) / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    _trim()
    _reset_rss_peak()
    base_rss, base_anon = rss_bytes(), (_status_kib("RssAnon") or 0) * 1024
    peak_anon = [base_anon]
    done = threading.Event()

    def watch():
        while not done.wait(0.002):
            peak_anon[0] = max(peak_anon[0], (_status_kib("RssAnon") or 0) * 1024)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    model, bundle = xmodel.load_xnemo(files, weight_dtype)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    peak_anon[0] = max(peak_anon[0], (_status_kib("RssAnon") or 0) * 1024)
    sites = model.get_additional_models_with_key("xnemo")[0].model
    modules = (model.model, sites, bundle.reference.model, bundle.motion.model)
    weights = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
    print(
        json.dumps(
            {
                "weights": weights,
                "peak_rss": _status_kib("VmHWM") * 1024 - base_rss,
                "peak_anon": peak_anon[0] - base_anon,
                "seconds": seconds,
            }
        )
    )


def section_load(args) -> None:
    """Peak memory while Load X-NeMo reads the official-format fp32 .pth files (issue 14, item 5)."""
    import json
    import subprocess

    folder = Path(args.weights_dir or tempfile.gettempdir()) / f"xnemo_load_fp32_c{args.load_channels}"
    paths = _load_files(folder, args.load_channels)
    file_bytes = sum(p.stat().st_size for p in paths.values())
    out(
        f"\n## Load peak: fp32 .pth files, UNets {args.load_channels} channels wide ({file_bytes / MiB:.0f} MiB on "
        f"disk; official: 320 channels, 9.7 GiB), each load in a fresh process"
    )
    out("peak RSS counts the file pages the load touched (page cache, reclaimable); anonymous is the private memory")
    for dtype in args.load_dtypes:
        for label, before in (("before", True), ("now", False)):
            cmd = [sys.executable, __file__, "--load-child", str(folder), "--weight-dtype", dtype]
            result = subprocess.run(
                cmd + (["--load-before"] if before else []), capture_output=True, text=True, check=True
            )
            r = json.loads(result.stdout.strip().splitlines()[-1])
            out(
                f"{dtype} weights {r['weights'] / MiB:.0f} MiB, {label}: peak RSS +{r['peak_rss'] / MiB:.0f} MiB "
                f"({r['peak_rss'] / r['weights']:.2f}x the weights), peak anonymous +{r['peak_anon'] / MiB:.0f} MiB "
                f"({r['peak_anon'] / r['weights']:.2f}x), {r['seconds']:.1f} s"
            )


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    p.add_argument("--fixture", default=str(FIXTURE_DIR), help="tiny fixture folder (tiny random weights if absent)")
    p.add_argument(
        "--full-size",
        action="store_true",
        help="full-size random weights with the official shapes (GPU): 512 px, 24-frame windows, 35 steps",
    )
    p.add_argument("--weights-dir", help="where --full-size writes/reuses its random weights (default: temp dir)")
    p.add_argument(
        "--weight-dtype",
        default=None,
        choices=("auto", "fp16", "bf16", "fp32"),
        help="Load X-NeMo weight_dtype (default fp32 on CPU/tiny, fp16 with --full-size)",
    )
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--frames", type=ints, default=None, help="frame counts (first one also used for the sizes)")
    p.add_argument("--sizes", type=ints, default=None, help="image sizes in pixels (latent = px/8)")
    p.add_argument("--steps", type=int, default=None, help="steps per run in the sweep")
    p.add_argument("--long-steps", type=int, default=1, help="steps for runs of --long-threshold frames or more")
    p.add_argument(
        "--long-threshold",
        type=int,
        default=200,
        help="runs of this many frames or more use --long-steps and --long-repeat",
    )
    p.add_argument(
        "--long-repeat",
        type=int,
        default=1,
        help="runs for long clips (each has many windows: min s/window is over all of them)",
    )
    p.add_argument("--project-steps", type=int, default=35, help="steps the projected fps assumes (official 35)")
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement (the minimum is reported)")
    p.add_argument("--context-length", type=int, default=24)
    p.add_argument("--context-overlap", type=int, default=4)
    p.add_argument("--motion-batch", type=int, default=16)
    p.add_argument(
        "--attention",
        default="comfy",
        choices=("comfy", "pytorch", "sub_quad", "split", "basic"),
        help="attention for the whole run ('comfy': what ComfyUI picked; on CPU that is sub_quad unless "
        "--use-pytorch-cross-attention, and 'pytorch' is much faster there)",
    )
    p.add_argument("--attention-backends", default="pytorch,sub_quad", type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--skip-attention", action="store_true", help="skip the attention-backend comparison")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (ComfyUI's TorchCompileModel path)")
    p.add_argument(
        "--compare-official-schedule",
        action="store_true",
        help="motion encoder once per clip vs per window per step, issue 7's 45-frame configuration",
    )
    p.add_argument(
        "--official-run-steps",
        type=int,
        default=2,
        help="steps actually sampled for the official-schedule comparison (per-step cost is constant)",
    )
    p.add_argument(
        "--sections",
        default=None,
        help="comma list of: params,official,fast,motion,vae,sweep,overhead,dtypes,memplan,load (default: all "
        "that apply; memplan and load need no weights and run first)",
    )
    p.add_argument("--dtypes", default="fp32,fp16,bf16", type=lambda s: [v for v in s.split(",") if v])
    p.add_argument(
        "--vae",
        default=None,
        type=lambda s: [tuple(int(x) for x in v.split("x")) for v in s.split(",")],
        help="VAE decode configs PXxFRAMES,... (default 128x4,128x16 on CPU; 512x24 full size)",
    )
    p.add_argument("--plan-size", type=int, default=512, help="image size of the memory plan table (memplan)")
    p.add_argument("--plan-cards", type=ints, default=[8, 12, 16, 24], help="card sizes in GB of the memory plan")
    p.add_argument(
        "--plan-frames", type=ints, default=[24, 48, 120, 250, 500, 1000], help="clip lengths of the memory plan"
    )
    p.add_argument(
        "--load-channels",
        type=int,
        default=96,
        help="UNet width of the fp32 files the load section writes (official 320: 9.7 GiB of files)",
    )
    p.add_argument("--load-dtypes", default="fp32,fp16", type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--load-child", help=argparse.SUPPRESS)
    p.add_argument("--load-before", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.full_size:
        a.weight_dtype = a.weight_dtype or "fp16"
        a.frames = a.frames or [24, 96]
        a.sizes = a.sizes or [512]
        a.steps = a.steps or 35
        if "--long-threshold" not in sys.argv:
            a.long_threshold = 96  # 96 frames (5 windows/step): 5 steps, once, to stay within ~10 min on one GPU
        if "--long-steps" not in sys.argv:
            a.long_steps = 5
        a.vae = a.vae or [(512, 24)]
    else:
        a.weight_dtype = a.weight_dtype or "fp32"
        a.frames = a.frames or [24, 96, 240, 1000]
        a.sizes = a.sizes or [128, 256]
        a.steps = a.steps or 2
        a.vae = a.vae or [(128, 4), (128, 16)]
    default_sections = ["memplan", "load", "params", "sweep", "fast", "motion", "vae", "dtypes"]
    if a.compare_official_schedule:
        default_sections.insert(2, "official")
    a.sections = a.sections.split(",") if a.sections else default_sections
    return a


def main(argv=None) -> None:
    args = parse_args(argv)
    setup(args.cpu)
    import torch

    if args.load_child:
        load_child(args.load_child, args.weight_dtype, args.load_before)
        return
    if "memplan" in args.sections:
        section_memory_plan(args)
    if "load" in args.sections:
        section_load(args)
    if not set(args.sections) - {"memplan", "load"}:
        out("\ndone")
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def factory(dtype=None):
        a = argparse.Namespace(**{**vars(args), "weight_dtype": dtype or args.weight_dtype})
        return Bench(a)

    import comfy.ldm.modules.attention as attention

    COMFY_ATTENTION.append(attention.optimized_attention.__name__)
    with attention_backend(args.attention):
        bench = factory()
        machine_info(args, bench)
        bench.sample(args.sizes[0], min(args.frames[0], args.context_length), 1)  # warm-up: first-call costs
        if "params" in args.sections:
            counts = count_full_size_parameters()
            denoise = counts["unet_2d"] + counts["motion_sites"]
            out("\n## Full-size parameter counts (official shapes built on the meta device)")
            out(
                f"denoising UNet {denoise / 1e9:.3f}B (SD1.5 UNet {counts['unet_2d'] / 1e6:.1f}M + motion sites "
                f"{counts['motion_sites'] / 1e6:.1f}M), ReferenceNet {counts['reference_unet'] / 1e6:.1f}M, temporal "
                f"sites {counts['temporal_sites'] / 1e6:.1f}M, motion encoder {counts['motion_encoder'] / 1e6:.1f}M; "
                f"total {sum(v for k, v in counts.items()) / 1e9:.2f}B = "
                f"{sum(counts.values()) * 2 / 1024**3:.2f} GiB in fp16/bf16, "
                f"{sum(counts.values()) * 4 / 1024**3:.2f} GiB fp32"
            )
        if "official" in args.sections:
            section_official_schedule(args, bench)
        if "fast" in args.sections:
            section_fast_paths(args, bench)
        if "motion" in args.sections:
            section_motion_encoder_memory(args, bench)
        if "vae" in args.sections:
            section_vae(args, bench)
        if "sweep" in args.sections:
            section_resolution_and_frames(args, bench)
        if "sweep" in args.sections or "overhead" in args.sections:
            section_window_overhead(args, bench)
        if "dtypes" in args.sections:
            del bench
            gc.collect()
            section_dtypes(args, factory)
    out("\ndone")


if __name__ == "__main__":
    main()
