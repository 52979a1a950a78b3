"""Parity fixtures: the fixture set's checkpoints loaded through Load X-NeMo's own code path, in fp32.

Every size, frame count, step count, timestep and offset comes from the fixture folder (XNEMO_FIXTURE_DIR), so any
fixture set of the same format is checked unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
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


# ----------------------------------------------------------------------------------------------------------------------
# End-to-end set (../shared/fixtures/xnemo_e2e or XNEMO_E2E_DIR): official pixels in, official pixels out.

E2E_DIR = Path(
    os.environ.get("XNEMO_E2E_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "xnemo_e2e"
).resolve()


@pytest.fixture(scope="session")
def e2e_dir() -> Path:
    if not (E2E_DIR / "manifest.json").is_file():
        pytest.fail(f"X-NeMo end-to-end set not found at {E2E_DIR}: set XNEMO_E2E_DIR or put ../shared beside the repo")
    return E2E_DIR


@pytest.fixture(scope="session")
def e2e_manifest(e2e_dir: Path) -> dict:
    return json.loads((e2e_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def e2e_golden(e2e_dir: Path) -> dict:
    return load_file(e2e_dir / "golden.safetensors")


@pytest.fixture(scope="session")
def e2e_inputs(e2e_dir: Path) -> dict:
    return load_file(e2e_dir / "inputs.safetensors")


@pytest.fixture(scope="session")
def e2e_models(e2e_dir: Path, e2e_manifest: dict, tmp_path_factory: pytest.TempPathFactory):
    """The set's CLIP and VAE regenerated from its recipe.py into the files users download, in ComfyUI model folders
    registered with folder_paths (once per run; about 1.5 GB, deleted afterwards). Yields e2e_weights.E2EModels."""
    import e2e_weights

    root = tmp_path_factory.mktemp("xnemo_e2e_models")
    try:
        yield e2e_weights.write_user_files(e2e_dir, e2e_manifest, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
