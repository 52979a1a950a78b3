"""Shared test set-up.

The pack is imported under the fixed package name `xnemo_pack` (whatever the checkout folder is called), exactly as
ComfyUI imports a custom node: as a package, with relative imports inside. ComfyUI's own source (`.comfyui/` or
$COMFYUI_DIR) goes on sys.path so in-process tests use the real `comfy` package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui").resolve()
FIXTURE_DIR = Path(os.environ.get("XNEMO_FIXTURE_DIR") or ROOT.parent / "shared" / "fixtures" / "xnemo_tiny").resolve()
MEDIA_DIR = (ROOT.parent / "shared" / "media").resolve()
ARTIFACTS = ROOT / "test-artifacts"


def _register_pack() -> None:
    if "xnemo_pack" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "xnemo_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["xnemo_pack"] = module
    spec.loader.exec_module(module)


def _cpu_when_no_gpu() -> None:
    """In-process `comfy.model_management` picks CUDA unless told `--cpu`; say it when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        from comfy.cli_args import args

        args.cpu = True


if COMFYUI_DIR.is_dir() and str(COMFYUI_DIR) not in sys.path:
    sys.path.insert(0, str(COMFYUI_DIR))
if COMFYUI_DIR.is_dir():
    _cpu_when_no_gpu()
_register_pack()


def comfyui_version() -> str:
    import comfy_harness

    return comfy_harness.comfyui_version(COMFYUI_DIR)


def pytest_report_header(config):
    """Every run says which core it tests: CI runs the suite on 0.30.0 and the floor lane on 0.3.75."""
    import comfy_harness

    try:
        frontend = comfy_harness.pinned_frontend(COMFYUI_DIR).version
    except Exception as err:  # the header must never stop the run
        frontend = f"? ({err})"
    return f"ComfyUI {comfyui_version()} at {COMFYUI_DIR} (pinned frontend {frontend})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus not in (0, 5):
        terminalreporter.write_line(f"FAILED on ComfyUI {comfyui_version()} ({COMFYUI_DIR})", red=True, bold=True)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE_DIR / "manifest.json").is_file():
        pytest.fail(
            f"X-NeMo fixture set not found at {FIXTURE_DIR}: set XNEMO_FIXTURE_DIR or put ../shared beside the repo"
        )
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def manifest(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA_DIR.is_dir():
        pytest.fail(f"test media not found at {MEDIA_DIR}")
    return MEDIA_DIR


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# ----------------------------------------------------------------------------------------------------------------------
# One real ComfyUI per session, shared by tests/server and tests/browser (launcher: scripts/comfy_harness.py).


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory):
    """A ComfyUI (`main.py --cpu`) with this pack loaded as custom node `xnemo`.

    Model folders `x-nemo`, `clip_vision` and `vae` are empty temp dirs (`comfy_server.model_dirs[name]`) that tests
    may fill; input/output/temp/user folders and the server log live under the same temp dir.
    """
    import comfy_harness

    try:
        comfy_dir = comfy_harness.comfyui_dir()
    except comfy_harness.HarnessError as err:
        pytest.fail(str(err))
    server = comfy_harness.start_server(tmp_path_factory.mktemp("comfyui"), comfy_dir=comfy_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy_client(comfy_server):
    return comfy_server.client()
