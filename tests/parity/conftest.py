"""Parity fixtures: the fixture set's checkpoints loaded through Load X-NeMo's own code path, in fp32.

Every size, frame count, step count, timestep and offset comes from the fixture folder (XNEMO_FIXTURE_DIR), so any
fixture set of the same format is checked unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file


@pytest.fixture(scope="session")
def inputs(fixture_dir: Path) -> dict:
    return load_file(fixture_dir / "inputs.safetensors")


@pytest.fixture(scope="session")
def golden(fixture_dir: Path) -> dict:
    return load_file(fixture_dir / "golden.safetensors")


@pytest.fixture(scope="session")
def loaded(fixture_dir: Path):
    """(MODEL, XNEMO) exactly as the Load X-NeMo node builds them, weights in fp32."""
    from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")
