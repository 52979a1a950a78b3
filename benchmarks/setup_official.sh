#!/usr/bin/env bash
# Set up the official X-NeMo code beside the pack, for benchmarks/side_by_side.py only (issue 13).
#
# Never run by CI or the tests, and nothing it makes is committed: everything goes into one ignored folder,
# $XNEMO_OFFICIAL_DIR (default benchmarks/.official/):
#   <dir>/            the official code at commit acaa1d0 (bytedance/x-nemo-inference), exported with `git archive`
#   <dir>/venv/       its own Python 3.11 venv with the versions the official code works with on CPU
#   <dir>/weights/    tiny random weights in the official file format, made with the official classes
#   <dir>/weights-official-size/   with --official-size only: random weights of the official shapes (UNet 320 x
#                     (1, 2, 4, 4), motion-encoder attention 8 x 128), about 5.2 GB of fp16 .pth; writing them needs
#                     about 11 GB of RAM for a few minutes (side_by_side.py --preset official-size uses them)
#   <dir>/COMMIT      the commit the code came from
#
# Usage:
#   bash benchmarks/setup_official.sh [--official-size] [GIT_DIR]
# GIT_DIR: a clone (or bare mirror) of bytedance/x-nemo-inference that contains commit acaa1d0. Without it the script
# clones the repository from GitHub into <dir>/.src. Idempotent: finished parts are kept.
#
# Environment: PYTHON (default python3.11), XNEMO_OFFICIAL_DIR, BENCH_CHANNELS (default "32 1 2 2 2": UNet width
# 32 x (1, 2, 2, 2), one step wider than the xnemo_tiny fixture's 32 x (1, 1, 1, 2)).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${XNEMO_OFFICIAL_DIR:-$ROOT/benchmarks/.official}"
COMMIT=acaa1d06559942f34a9bf495ec82be7e5ffc9268
PYTHON="${PYTHON:-python3.11}"
read -r -a CH <<< "${BENCH_CHANNELS:-32 1 2 2 2}"
FIXTURE="${XNEMO_FIXTURE_DIR:-$ROOT/../shared/fixtures/xnemo_tiny}"
log() { printf '[setup_official] %s\n' "$*"; }
OFFICIAL_SIZE=0
if [ "${1:-}" = "--official-size" ]; then OFFICIAL_SIZE=1; shift; fi

mkdir -p "$DIR"
# 1. the official code ------------------------------------------------------------------------------------------
if [ ! -f "$DIR/src/pipelines/pipeline_pose2vid_motenc_long.py" ]; then
  GIT_DIR_IN="${1:-}"
  if [ -z "$GIT_DIR_IN" ]; then
    GIT_DIR_IN="$DIR/.src"
    [ -d "$GIT_DIR_IN" ] || git clone --quiet https://github.com/bytedance/x-nemo-inference "$GIT_DIR_IN"
  fi
  log "exporting $COMMIT from $GIT_DIR_IN"
  git --git-dir="$(git -C "$GIT_DIR_IN" rev-parse --absolute-git-dir 2>/dev/null || echo "$GIT_DIR_IN")" archive "$COMMIT" \
    | tar -x -C "$DIR"
fi
echo "$COMMIT" > "$DIR/COMMIT"

# 2. its venv ---------------------------------------------------------------------------------------------------
if ! "$DIR/venv/bin/python" -c "import torch, diffusers, transformers, omegaconf" 2>/dev/null; then
  log "creating $DIR/venv with $PYTHON"
  "$PYTHON" -m venv "$DIR/venv"
  PIP=("$DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  # CPU torch as the fixture sets were made with; torchvision only for transforms.GaussianBlur (pure torch), so its
  # dependencies (another torch) are not pulled in.
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" --no-deps torchvision==0.28.0
  "${PIP[@]}" diffusers==0.26.3 transformers==4.38.2 "huggingface_hub<0.26" accelerate==0.27.2 omegaconf einops \
    safetensors "numpy<2" scipy scikit-image
fi

# 3. the benchmark weights --------------------------------------------------------------------------------------
if [ ! -f "$DIR/weights/bench_config.json" ]; then
  log "writing tiny official-format weights to $DIR/weights (UNet ${CH[0]} x (${CH[*]:1}))"
  "$DIR/venv/bin/python" "$ROOT/benchmarks/official_worker.py" --official-dir "$DIR" make-weights "$DIR/weights" \
    --base-config "$FIXTURE/config.json" --channels "${CH[0]}" --channel-mult "${CH[@]:1}"
fi
if [ "$OFFICIAL_SIZE" = 1 ] && [ ! -f "$DIR/weights-official-size/bench_config.json" ]; then
  log "writing official-size weights to $DIR/weights-official-size (UNet 320 x (1 2 4 4), about 5.2 GB)"
  "$DIR/venv/bin/python" "$ROOT/benchmarks/official_worker.py" --official-dir "$DIR" make-weights \
    "$DIR/weights-official-size" --base-config "$FIXTURE/config.json" --channels 320 --channel-mult 1 2 4 4 \
    --motion-heads 8 --motion-head-dim 128
fi
log "ready: $DIR (run .venv/bin/python benchmarks/side_by_side.py; set XNEMO_OFFICIAL_DIR=$DIR if not the default)"
