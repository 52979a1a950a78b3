"""Peak RAM of the output side (LATENT -> MP4) against clip length: X-NeMo Save Video (streaming) vs the core path.

    flock /work/heavy.lock .venv/bin/python benchmarks/output_memory.py                # 120, 480, 1000 + core 120
    .venv/bin/python benchmarks/output_memory.py --frames 24 48 --core 24 --size 32   # a quick look

Each case runs in a fresh process (ComfyUI in-process from .comfyui/ or $COMFYUI_DIR, `--cpu` when there is no GPU,
the pack as `xnemo_pack`, as bench.py): a temporal VAE of the official SVD shape (ComfyUI's AutoencodingEngine with
the temporal VideoDecoder, 128 channels x (1, 2, 4, 4), 2 ResNet blocks per level; random weights, which cost the
same as the real ones), a random latent of F frames at `--size` px, a 1920x1080 original with a 600 px crop box to
paste into, and 44.1 kHz stereo audio of the clip's length at 25 fps.

- **stream**: the node itself, `XNeMoSaveVideo.execute` (decode_chunk_size 25, paste back, H.264 + AAC).
- **core**: what the example workflows did before: X-NeMo VAE Decode -> X-NeMo Paste Back -> Create Video, saved
  with `VideoFromComponents.save_to` as Save Video does.

Peak is the RSS high-water mark of the run above the RSS just before it (set-up done: VAE built, latent, original and
audio in memory; `/proc/self/clear_refs` resets the mark), plus the process's absolute maximum (getrusage). The
decode itself scales with `--size` (the full-size decoder on 2 CPU cores takes about 0.35 s per 32 px frame and 2.7 s
per 64 px frame), but its memory is one chunk at any length; the 1080p frames are full size whatever `--size` is.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui").resolve()
MiB = 1024**2
ORIGINAL = (1080, 1920)
BOX = (660, 240, 1260, 840)  # 600 x 600 px: the reference crop's box in the original
FPS, AUDIO_RATE = 25.0, 44100


def setup() -> None:
    sys.path.insert(0, str(COMFYUI_DIR))
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    spec = importlib.util.spec_from_file_location(
        "xnemo_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["xnemo_pack"] = module
    spec.loader.exec_module(module)


def svd_shape_vae():
    """comfy.sd.VAE around ComfyUI's temporal VAE at the official SVD shape, random weights (seeded)."""
    import comfy.model_patcher
    import comfy.sd
    import torch
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    config = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    model = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": config},
        decoder_config={
            "target": "comfy.ldm.modules.temporal_ae.VideoDecoder",
            "params": {**config, "video_kernel_size": [3, 1, 1], "alpha": 0.0},
        },
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim == 1 else p[0].numel() ** -0.5))
    vae = comfy.sd.VAE(sd={})  # no weights: ComfyUI returns early; the engine is set below
    vae.first_stage_model = model
    vae.downscale_ratio = vae.upscale_ratio = 8
    vae.device = vae.output_device = torch.device("cpu")
    vae.vae_dtype = torch.float32
    vae.patcher = comfy.model_patcher.ModelPatcher(model, load_device=vae.device, offload_device=vae.device)
    return vae


def original_picture():
    """The shared portrait stretched to 1920x1080 (a photo-like picture: x264 costs what it costs on real input)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    picture = ROOT.parent / "shared" / "media" / "ref_image.png"
    image = torch.from_numpy(np.asarray(Image.open(picture).convert("RGB"))).float() / 255
    image = F.interpolate(image.permute(2, 0, 1)[None], size=ORIGINAL, mode="bilinear", align_corners=False)
    return image.permute(0, 2, 3, 1).contiguous()


def kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def worker(mode: str, frames: int, size: int, chunk: int, threads: int) -> dict:
    setup()
    import folder_paths
    import torch

    from xnemo_pack.nodes.paste_back import XNeMoPasteBack
    from xnemo_pack.nodes.save_video import XNeMoSaveVideo
    from xnemo_pack.nodes.vae import XNeMoVAEDecode
    from xnemo_pack.xnemo_core.pure.payloads import CropInfo

    torch.set_num_threads(threads)
    out_dir = Path(tempfile.mkdtemp(prefix="xnemo_output_memory_"))
    folder_paths.set_output_directory(str(out_dir))
    vae = svd_shape_vae()
    latent = torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    original = original_picture()
    crop = CropInfo(box=BOX, image_size=ORIGINAL, crop_size=(size, size))
    samples = round(AUDIO_RATE * frames / FPS)
    t = torch.arange(samples) / AUDIO_RATE
    audio = {
        "waveform": torch.stack([torch.sin(2 * torch.pi * f * t) for f in (440, 660)])[None] * 0.2,
        "sample_rate": AUDIO_RATE,
    }

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark
    before = kib("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    if mode == "stream":
        XNeMoSaveVideo.execute({"samples": latent}, vae, FPS, "bench/stream", chunk, audio, crop, original, 0.1, False)
    else:
        from comfy_extras.nodes_video import CreateVideo

        images = XNeMoVAEDecode.execute({"samples": latent}, vae, chunk).args[0]
        pasted = XNeMoPasteBack.execute(images, crop, original, 0.1, False).args[0]
        video = CreateVideo.execute(pasted, FPS, audio).args[0]
        video.save_to(str(out_dir / "core.mp4"))  # what Save Video calls
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    files = sorted(out_dir.rglob("*.mp4"))
    import av

    with av.open(str(files[0])) as container:
        written = container.streams.video[0].frames
        dims = (container.streams.video[0].width, container.streams.video[0].height)
        has_audio = bool(container.streams.audio)
    for f in files:
        f.unlink()
    return {
        "mode": mode,
        "frames": frames,
        "written": written,
        "size": dims,
        "audio": has_audio,
        "before": before,
        "peak_above": kib("VmHWM") - before,
        "peak_abs": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": seconds,
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[120, 480, 1000], help="streamed clip lengths")
    parser.add_argument("--core", type=int, nargs="*", default=[120], help="clip lengths for the core path")
    parser.add_argument("--size", type=int, default=32, help="crop (generation) size in px, a multiple of 8")
    parser.add_argument("--chunk", type=int, default=25, help="decode_chunk_size (official 25)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        help="run the workers with glibc's MALLOC_MMAP_THRESHOLD_ fixed (bytes): freed large blocks go back to the "
        "system at once, which separates heap retention from live memory",
    )
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "FRAMES"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.size, a.chunk, a.threads)))
        return

    import torch

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GiB RAM, load average "
        f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, torch {torch.__version__}, "
        f"ComfyUI at {COMFYUI_DIR.name}"
    )
    print(
        f"set-up: SVD-shape temporal VAE (random), latent {a.size // 8}x{a.size // 8} ({a.size} px crops), original "
        f"{ORIGINAL[1]}x{ORIGINAL[0]}, crop box 600x600, {FPS:g} fps, {AUDIO_RATE} Hz stereo audio, "
        f"decode_chunk_size {a.chunk}, {a.threads} torch threads; each case in a fresh process"
        + (f"; MALLOC_MMAP_THRESHOLD_={a.mmap_threshold}" if a.mmap_threshold else "")
    )
    print(
        "| path | frames | written | video | peak RSS above start (MiB) | per frame (MiB) | process max RSS "
        "(MiB) | RSS at start (MiB) | wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    # the shortest streamed clip, then the core path (the comparison), then the longer clips
    streamed = [("stream", n) for n in a.frames]
    cases = streamed[:1] + [("core", n) for n in a.core] + streamed[1:]
    for mode, frames in cases:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            str(frames),
            "--size",
            str(a.size),
            "--chunk",
            str(a.chunk),
            "--threads",
            str(a.threads),
        ]
        env = dict(os.environ)
        if a.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(a.mmap_threshold)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"| {mode} | {frames} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {mode} | {frames} | {r['written']} | {r['size'][0]}x{r['size'][1]}{' + audio' if r['audio'] else ''} "
            f"| {r['peak_above'] / MiB:.0f} | {r['peak_above'] / frames / MiB:.2f} | {r['peak_abs'] / MiB:.0f} "
            f"| {r['before'] / MiB:.0f} | {r['seconds']:.0f} | {r['cpu']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
