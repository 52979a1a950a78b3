#!/usr/bin/env python
"""The official X-NeMo pipeline, timed per stage: the official half of `side_by_side.py`. Benchmark only.

Runs with the official code's own virtual environment (see `setup_official.sh`), never with the pack's, and imports
the official modules from the folder given by --official-dir (or $XNEMO_OFFICIAL_DIR). Nothing of the official code is
copied here: this file builds the official classes, feeds them the side-by-side inputs and times them with forward
hooks.

    make-weights OUT   tiny random weights in the official file format (four .pth files), built with the official
                       classes from an official-style config, as the fixture sets are
    run                one warm-up, then one timed call of the official `Pose2VideoPipeline`; writes a JSON report and
                       the final latents

VAE and CLIP are stubbed on both sides (the pack's scope): the stub VAE's encoder returns the given latent mean and
the decoder is skipped, the stub image encoder returns the given CLIP embedding. The window offsets (the pipeline's
unseeded `random.randint`) and the start noise (`torch.randn_like`) are replaced by the given ones.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import os
import random
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

RSS_TORCH_KIB = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])  # after `import torch`
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from profiling import add, add_ranges, profiled  # noqa: E402  (after the RSS baseline of `import torch`)

LATENT_SCALE = 0.18215


# ---------------------------------------------------------------------------------------------------------------
# Memory (same method as the pack worker: VmHWM after clear_refs)
# ---------------------------------------------------------------------------------------------------------------


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> int:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    return status_kib("VmHWM") * 1024


# ---------------------------------------------------------------------------------------------------------------
# Importing the official code
# ---------------------------------------------------------------------------------------------------------------


def import_official(official_dir: Path):
    """Put the official checkout on sys.path and import what the pipeline needs (with two environment shims)."""
    if not (official_dir / "src" / "pipelines" / "pipeline_pose2vid_motenc_long.py").is_file():
        raise SystemExit(f"no official X-NeMo checkout at {official_dir}: run benchmarks/setup_official.sh first")
    # The CPU torch wheel and the torchvision 0.28 wheel at hand disagree on torchvision's C ops: declaring the two
    # schemas torchvision registers fakes for lets `import torchvision` succeed (only GaussianBlur, pure torch, is
    # used).
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision.transforms.functional as tvf

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tvf)  # removed in torchvision 0.17+
    sys.path.insert(0, str(official_dir))
    from src.models.motion_encoder import FAN_feature_extractor, encoder
    from src.models.unet_2d_condition import UNet2DConditionModel
    from src.models.unet_3d import UNet3DConditionModel
    from src.pipelines import pipeline_pose2vid_motenc_long as pipeline_module

    return types.SimpleNamespace(
        UNet2D=UNet2DConditionModel,
        UNet3D=UNet3DConditionModel,
        MotEncoder=encoder.MotEncoder_withExtra,
        fan=FAN_feature_extractor,
        pipeline_module=pipeline_module,
    )


def load_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def read_config(weights: Path) -> dict:
    """{"unet2d": diffusers UNet2D config, "motion_encoder_attention": [heads, head_dim]} of a weights folder: the
    `bench_config.json` written by make-weights, or a fixture set's `config.json` (tests' format)."""
    if (weights / "bench_config.json").is_file():
        return json.loads((weights / "bench_config.json").read_text())
    fixture = json.loads((weights / "config.json").read_text())
    unet2d = next(v for k, v in fixture.items() if k.startswith("unet2d_config"))
    fan = next(v for k, v in fixture["motion_encoder"].items() if k.startswith("FAN_SA attention"))
    return {"unet2d": unet2d, "motion_encoder_attention": [fan["num_attention_heads"], fan["attention_head_dim"]]}


def build_models(off, official_dir: Path, config: dict):
    """The three official networks from a config, as the official script builds them (random weights)."""
    import safetensors.torch

    infer = load_yaml(official_dir / "configs" / "inference" / "inference_xnemo_stage2.yaml")
    unet2d = {k: v for k, v in config["unet2d"].items() if not k.startswith("_")}
    reference = off.UNet2D.from_config(unet2d)
    # UNet3DConditionModel.from_pretrained_2d reads `<folder>/unet/config.json` and a base weights file; X-NeMo's
    # denoising file then overwrites every 2-D weight, so any base of the right shape does (here the ReferenceNet's).
    with tempfile.TemporaryDirectory(prefix="xnemo_official_base_") as tmp:
        (Path(tmp) / "unet").mkdir()
        (Path(tmp) / "unet" / "config.json").write_text(json.dumps(config["unet2d"]))
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in reference.state_dict().items()},
            str(Path(tmp) / "unet" / "diffusion_pytorch_model.safetensors"),
        )
        denoising = off.UNet3D.from_pretrained_2d(
            tmp, "", subfolder="unet", unet_additional_kwargs=infer["unet_additional_kwargs"]
        )
    heads = config["motion_encoder_attention"]
    original = off.fan.TemporalTransformer3DModel
    off.fan.TemporalTransformer3DModel = functools.partial(
        original, num_attention_heads=heads[0], attention_head_dim=heads[1]
    )
    try:
        motion = off.MotEncoder()
    finally:
        off.fan.TemporalTransformer3DModel = original
    return reference, denoising, motion, infer


# ---------------------------------------------------------------------------------------------------------------
# make-weights
# ---------------------------------------------------------------------------------------------------------------


def randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Make the default-initialised official modules non-degenerate, as the fixture sets do: parameters the official
    constructors leave all-zero (e.g. zero-initialised output projections, biases) get N(0, 0.02), all-one norm
    weights 1 + 0.1 N(0, 1), BatchNorm statistics random; every other weight keeps PyTorch's default init."""
    with torch.no_grad():
        for p in module.parameters():
            if bool((p == 0).all()):
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
            elif bool((p == 1).all()):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=generator))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=generator))


def fp16_state(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() and not k.endswith("pe") else v).contiguous() for k, v in sd.items()}


def make_weights(args, off) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads((Path(args.base_config)).read_text())
    unet2d = next(v for k, v in base.items() if k.startswith("unet2d_config"))
    unet2d = dict(unet2d, block_out_channels=[args.channels * m for m in args.channel_mult])
    config = {
        "unet2d": unet2d,
        "motion_encoder_attention": [args.motion_heads, args.motion_head_dim],
        "made_by": "benchmarks/official_worker.py make-weights",
        "seed": args.seed,
    }
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    reference, denoising, motion, _ = build_models(off, Path(args.official_dir), config)
    randomize(reference, g)
    randomize(denoising, g)
    randomize(motion, g)
    dsd = denoising.state_dict()
    torch.save(
        fp16_state({k: v for k, v in dsd.items() if ".temporal_modules." not in k}), out / "xnemo_denoising_unet.pth"
    )
    torch.save(
        fp16_state({k: v for k, v in dsd.items() if ".temporal_modules." in k}), out / "xnemo_temporal_module.pth"
    )
    torch.save(fp16_state(reference.state_dict()), out / "xnemo_reference_unet.pth")
    torch.save(fp16_state(motion.state_dict()), out / "xnemo_motion_encoder.pth")
    (out / "bench_config.json").write_text(json.dumps(config, indent=1))
    print(
        f"wrote {out}: UNet channels {unet2d['block_out_channels']}, motion encoder attention "
        f"{args.motion_heads}x{args.motion_head_dim}"
    )


# ---------------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------------

SYNC = []  # torch.cuda.synchronize when timing a GPU run


def tic() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process), as side_by_side.py measures."""
    for sync in SYNC:
        sync()
    return time.perf_counter(), time.process_time()


def toc(t0: tuple[float, float]) -> list[float]:
    t1 = tic()
    return [t1[0] - t0[0], t1[1] - t0[1]]


class Timer:
    """Forward-hook stopwatch for one module: total [wall, cpu] seconds, calls, and per-call (label, [wall, cpu])."""

    def __init__(self, module: torch.nn.Module, label=None):
        self.total, self.calls, self.log, self.label = [0.0, 0.0], 0, [], label
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        self._tag = self.label(args, kwargs) if self.label else None
        self._t0 = tic()

    def _post(self, module, args, output):
        dt = toc(self._t0)
        self.total = add(self.total, dt)
        self.calls += 1
        self.log.append((self._tag, dt))

    def reset(self):
        self.total, self.calls, self.log = [0.0, 0.0], 0, []


def stub_vae(latent_mean: torch.Tensor, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLTemporalDecoder
    from diffusers.configuration_utils import FrozenDict

    class StubVAE(AutoencoderKLTemporalDecoder):
        """Encoder returns the given latent mean; isinstance-compatible so the pipeline takes its SVD decode path,
        which the worker replaces by returning the latents."""

        def __init__(self):
            torch.nn.Module.__init__(self)
            self._internal_dict = FrozenDict(block_out_channels=[128, 256, 512, 512], scaling_factor=LATENT_SCALE)
            self.register_buffer("mean", latent_mean.to(device=device, dtype=dtype))

        @property
        def dtype(self):
            return dtype

        @property
        def device(self):
            return device

        def encode(self, x, *args, **kwargs):
            dist = types.SimpleNamespace(mean=self.mean)
            return types.SimpleNamespace(latent_dist=dist)

    return StubVAE()


def stub_image_encoder(clip_embed: torch.Tensor, device: torch.device, dtype: torch.dtype):
    class StubImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("embed", clip_embed.reshape(1, -1).to(device=device, dtype=dtype))

        @property
        def dtype(self):
            return dtype

        @property
        def device(self):  # DiffusionPipeline.device asks its modules in set order: any of them may be asked
            return device

        def forward(self, pixel_values, *args, **kwargs):
            return types.SimpleNamespace(image_embeds=self.embed)

    return StubImageEncoder()


def run(args, off) -> None:
    from diffusers import DDIMScheduler
    from PIL import Image
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    device, dtype = torch.device(args.device), dtypes[args.dtype]
    if device.type == "cuda":
        SYNC.append(torch.cuda.synchronize)
    weights = Path(args.weights)
    config = read_config(weights)
    data = load_file(args.inputs)
    reference, denoising, motion, infer = build_models(off, Path(args.official_dir), config)

    def sd(name):
        return torch.load(weights / name, map_location="cpu", weights_only=True)

    # As the official script: the denoising and temporal files strict=False, the others strict=True.
    denoising.load_state_dict(sd("xnemo_denoising_unet.pth"), strict=False)
    reference.load_state_dict(sd("xnemo_reference_unet.pth"), strict=True)
    motion.load_state_dict(sd("xnemo_motion_encoder.pth"), strict=True)
    denoising.load_state_dict(sd("xnemo_temporal_module.pth"), strict=False)
    for m in (reference, denoising, motion):
        m.to(device=device, dtype=dtype).eval()

    pm = off.pipeline_module
    pipe = pm.Pose2VideoPipeline(
        vae=stub_vae(data["latent_mean"], device, dtype),
        image_encoder=stub_image_encoder(data["clip_embed"], device, dtype),
        reference_unet=reference,
        denoising_unet=denoising,
        motion_encoder=motion,
        scheduler=DDIMScheduler(**infer["noise_scheduler_kwargs"]),
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.decode_latents_svd = lambda latents, *a, **k: latents.detach().cpu().float().numpy()

    if args.profile_out:

        def site(name, module):
            if type(module).__name__ != "VanillaTemporalModule":
                return None
            return "xnemo:site motion cross-attention" if "motion_modules" in name else "xnemo:site temporal"

        add_ranges(denoising, lambda n, m: "xnemo:UNet call (all)" if n == "" else site(n, m))
        add_ranges(reference, lambda n, m: "xnemo:reference UNet" if n == "" else None)
        add_ranges(motion, lambda n, m: "xnemo:motion encoder" if n == "" else None)
    motion_t = Timer(motion)
    reference_t = Timer(reference)
    unet_t = Timer(denoising, label=lambda a, k: int(a[1]) if len(a) > 1 else int(k["timestep"]))
    bank_t = [[0.0, 0.0]]
    control = off.pipeline_module.ReferenceAttentionControl
    original_update = control.update

    def timed_update(self, *a, **k):
        if dtype == torch.bfloat16:  # the official bank is always fp16, which a bf16 UNet cannot concatenate
            k.setdefault("dtype", dtype)
        t0 = tic()
        try:
            return original_update(self, *a, **k)
        finally:
            bank_t[0] = add(bank_t[0], toc(t0))

    control.update = timed_update

    h, w = data["ref_latent"].shape[-2:]
    width, height = w * 8, h * 8

    def pil(u8):  # [3, H, W] uint8 -> PIL
        return Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy())

    def call(frames: int, steps: int, noise: torch.Tensor | None, offsets: list[int] | None):
        crops = [pil(c) for c in data["driving_crops_u8"][:frames]]
        queue = list(offsets) if offsets is not None else None
        fake_random = types.SimpleNamespace(
            randint=(lambda a, b: queue.pop(0)) if queue is not None else random.Random(0).randint
        )
        original_randn_like = torch.randn_like

        def randn_like(t, *a, **k):
            if noise is not None and tuple(t.shape) == tuple(noise.shape):
                return noise.to(device=t.device, dtype=t.dtype)
            return original_randn_like(t, *a, **k)

        pm.random, torch.randn_like = fake_random, randn_like
        try:
            return pipe(
                pil(torch.zeros(3, height, width, dtype=torch.uint8)),
                crops,
                pil(data["ref_crop_u8"]),
                width,
                height,
                frames,
                steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(0),
                mot_bbox_param=data["bbox_params"][:frames],
                context_frames=args.context_frames,
                context_overlap=args.context_overlap,
            ).videos
        finally:
            pm.random, torch.randn_like = random, original_randn_like

    with torch.no_grad():
        t0 = tic()
        call(min(args.frames, args.context_frames), 1, None, None)  # warm-up: one step, one window
        warmup = toc(t0)
        for t in (motion_t, reference_t, unet_t):
            t.reset()
        bank_t[0] = [0.0, 0.0]
        load_before = os.getloadavg()[0]
        base = reset_peak()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = tic()
        with profiled(args.profile_out):
            video = call(
                args.frames,
                args.steps,
                data["noise"][:, :, : args.frames].contiguous(),
                data["offsets"][: args.steps].tolist(),
            )
        total = toc(t0)
        peak = peak_bytes()
        gpu_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    per_step: dict[int, list[float]] = {}
    windows: dict[int, int] = {}
    for t, dt in unet_t.log:
        per_step[t] = add(per_step.get(t, [0.0, 0.0]), dt)
        windows[t] = windows.get(t, 0) + 1
    reference_total = add(reference_t.total, bank_t[0])
    report = {
        "side": "official",
        "frames": args.frames,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "warmup": warmup,
        "motion": motion_t.total,
        "motion_calls": motion_t.calls,
        "reference": reference_total,
        "reference_calls": reference_t.calls,
        "unet": unet_t.total,
        "unet_calls": unet_t.calls,
        "unet_per_step": [per_step[t] for t in sorted(per_step, reverse=True)],
        "windows_per_step": [windows[t] for t in sorted(windows, reverse=True)],
        "total": total,
        "overhead": [total[i] - motion_t.total[i] - reference_total[i] - unet_t.total[i] for i in (0, 1)],
        "peak_rss_bytes": peak,
        "rss_before_run_bytes": base,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "device": str(device),
        "dtype": args.dtype,
        "gpu_peak_bytes": gpu_peak,
        "rss_torch_bytes": RSS_TORCH_KIB * 1024,
        "rss_libraries_bytes": args.rss_libraries,
    }
    latents = torch.as_tensor(video).float()  # [1, 4, F, h, w], the final (scaled) latents
    save_file({"latents": latents.contiguous()}, args.latents_out)
    Path(args.report).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-dir", default=os.environ.get("XNEMO_OFFICIAL_DIR"))
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-weights")
    m.add_argument("out")
    m.add_argument("--base-config", required=True, help="a fixture set's config.json (its unet2d config is widened)")
    m.add_argument("--channels", type=int, default=64)
    m.add_argument("--channel-mult", type=int, nargs=4, default=[1, 1, 1, 2])
    m.add_argument("--motion-heads", type=int, default=2)
    m.add_argument("--motion-head-dim", type=int, default=16)
    m.add_argument("--seed", type=int, default=20261201)
    r = sub.add_parser("run")
    r.add_argument("--weights", required=True)
    r.add_argument("--inputs", required=True)
    r.add_argument("--frames", type=int, required=True)
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--guidance", type=float, default=2.5)
    r.add_argument("--context-frames", type=int, default=24)
    r.add_argument("--context-overlap", type=int, default=4)
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    r.add_argument("--report", required=True)
    r.add_argument("--latents-out", required=True)
    r.add_argument("--profile-out", help="torch.profiler summary of the timed call to this file")
    args = p.parse_args(argv)
    if not args.official_dir:
        raise SystemExit("give --official-dir or set XNEMO_OFFICIAL_DIR (see benchmarks/setup_official.sh)")
    off = import_official(Path(args.official_dir).resolve())
    args.rss_libraries = status_kib("VmRSS") * 1024  # torch, diffusers, transformers and the official modules
    make_weights(args, off) if args.cmd == "make-weights" else run(args, off)


if __name__ == "__main__":
    main()
