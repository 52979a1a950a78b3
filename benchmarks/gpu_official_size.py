#!/usr/bin/env python
"""The official-size side by side on a GPU, fp16 and bf16, in one command (issue 21). A benchmark script, never a test.

Runs `side_by_side.py` once per dtype on the official shapes (`setup_official.sh --official-size`): 512 px, 24 and 96
frames (1 and 5 windows per step), 35 DDIM steps, both sides on CUDA, one round each, and prints each table as it
comes. A short GPU slot is enough with fewer steps or frames:

    .venv/bin/python benchmarks/gpu_official_size.py                         # fp16, bf16; 24, 96 frames; 35 steps
    .venv/bin/python benchmarks/gpu_official_size.py --steps 5 --frames 24   # cut short
    .venv/bin/python benchmarks/gpu_official_size.py --device cpu --weights benchmarks/.official/weights \\
        --size 64 --frames 8 --steps 1 --dtypes fp32                          # smoke check on the tiny weights

The official venv needs a CUDA torch first (`setup_official.sh` installs the CPU wheel):
    benchmarks/.official/venv/bin/pip install --force-reinstall torch==2.13.0
The report is appended to benchmarks/results/side-by-side-<GPU>-official-size-<date>.txt (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import side_by_side  # noqa: E402


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=True
        )
        return out.stdout.splitlines()[0].strip().replace(" ", "_")
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "cpu"


def official_has_cuda(python: Path) -> bool:
    probe = [str(python), "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--frames", default="24,96", help="comma-separated frame counts (default 24,96)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--official-dir", type=Path, default=side_by_side.OFFICIAL_DIR)
    p.add_argument("--weights", type=Path, help="default <official-dir>/weights-official-size")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    python = args.official_dir / "venv" / "bin" / "python"
    if args.device.startswith("cuda") and python.exists() and not official_has_cuda(python):
        raise SystemExit(
            f"the official venv's torch has no CUDA: {args.official_dir}/venv/bin/pip install --force-reinstall "
            "torch==2.13.0"
        )
    weights = args.weights or args.official_dir / side_by_side.PRESETS["official-size"]["weights"]
    out = args.out or HERE / "results" / f"side-by-side-{gpu_name()}-official-size-{datetime.date.today()}.txt"
    configs = ",".join(f"{int(f)}x{args.steps}" for f in args.frames.split(","))
    for dtype in args.dtypes.split(","):
        side_by_side.main(
            [
                "--official-dir",
                str(args.official_dir),
                "--weights",
                str(weights),
                "--device",
                args.device,
                "--dtype",
                dtype,
                "--threads",
                str(args.threads),
                "--configs",
                configs,
                "--rounds",
                str(args.rounds),
                "--size",
                str(args.size),
                "--out",
                str(out),
            ]
        )
    print(f"report appended to {out}")


if __name__ == "__main__":
    main()
