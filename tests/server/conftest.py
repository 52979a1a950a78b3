"""Fixtures for tests against a real ComfyUI server (started once per session, on 127.0.0.1).

The launcher and client live in `scripts/comfy_harness.py`, shared with `scripts/demo.py`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import comfy_harness  # noqa: E402


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory):
    """A ComfyUI (`main.py --cpu`) with this pack loaded as custom node `xnemo`.

    Model folders `x-nemo`, `clip_vision` and `vae` are empty temp dirs (`comfy_server.model_dirs[name]`) that tests
    may fill; input/output/temp/user folders and the server log live under the same temp dir.
    """
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
def comfy_client(comfy_server) -> comfy_harness.ComfyClient:
    return comfy_server.client()


@pytest.fixture(scope="session")
def xnemo_fixture_models(comfy_server, fixture_dir: Path) -> dict[str, str]:
    """Copy the tiny fixture checkpoints into the server's `x-nemo` folder; returns {loader input id: file name}."""
    from xnemo_pack.xnemo_core.constants import CHECKPOINT_FILES

    names = {}
    for role, stem in CHECKPOINT_FILES.items():
        source = fixture_dir / f"{stem}.pth"
        target = comfy_server.model_dirs["x-nemo"] / source.name
        if not target.exists():
            shutil.copyfile(source, target)
        names[role] = source.name
    return names
