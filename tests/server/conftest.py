"""Fixtures for tests against a real ComfyUI server (started once per session, on 127.0.0.1).

The server itself (`comfy_server`, `comfy_client`) is in `tests/conftest.py`, shared with `tests/browser`; the launcher
and client live in `scripts/comfy_harness.py`, shared with `scripts/demo.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def xnemo_fixture_models(comfy_server, fixture_dir: Path) -> dict[str, str]:
    """Copy the tiny fixture checkpoints into the server's `x-nemo` folder; returns {loader input id: file name}."""
    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

    names = {}
    for role, stem in CHECKPOINT_FILES.items():
        source = fixture_dir / f"{stem}.pth"
        target = comfy_server.model_dirs["x-nemo"] / source.name
        if not target.exists():
            shutil.copyfile(source, target)
        names[role] = source.name
    return names
