"""Parity fixtures: the fixture set's checkpoints loaded through Load X-NeMo's own code path, in fp32.

Every size, frame count, step count, timestep and offset comes from the fixture folder (XNEMO_FIXTURE_DIR), so any
fixture set of the same format is checked unchanged.
"""

from __future__ import annotations

import hashlib
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
# End-to-end sets (../shared/fixtures/xnemo_e2e, square, and xnemo_e2e_portrait, 96x128; or the folders in
# XNEMO_E2E_DIR, separated by os.pathsep): official pixels in, official pixels out. Every e2e test runs on each set.

_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
E2E_DIRS = [
    Path(p).resolve()
    for p in (
        os.environ.get("XNEMO_E2E_DIR")
        or os.pathsep.join(str(_FIXTURES / n) for n in ("xnemo_e2e", "xnemo_e2e_portrait"))
    ).split(os.pathsep)
    if p
]


@pytest.fixture(scope="session", params=E2E_DIRS, ids=[d.name for d in E2E_DIRS])
def e2e_dir(request) -> Path:
    if not (request.param / "manifest.json").is_file():
        pytest.fail(
            f"X-NeMo end-to-end set not found at {request.param}: set XNEMO_E2E_DIR or put ../shared beside the repo"
        )
    return request.param


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
def e2e_model_store(tmp_path_factory: pytest.TempPathFactory):
    """Regenerated CLIP/VAE files per recipe (sets made from the same recipe share them; about 1.5 GB each, deleted
    at the end of the run)."""
    store: dict[str, object] = {}
    try:
        yield store
    finally:
        for models in store.values():
            shutil.rmtree(models.root, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_models(e2e_dir: Path, e2e_manifest: dict, e2e_model_store: dict, tmp_path_factory: pytest.TempPathFactory):
    """The set's CLIP and VAE regenerated from its recipe.py into the files users download, in ComfyUI model folders
    registered with folder_paths. Yields e2e_weights.E2EModels."""
    import e2e_weights

    key = hashlib.sha256((e2e_dir / "recipe.py").read_bytes()).hexdigest() + json.dumps(
        {net: e2e_manifest["networks"][net]["digest_sha256"] for net in ("clip", "vae")}, sort_keys=True
    )
    if key not in e2e_model_store:
        root = tmp_path_factory.mktemp("xnemo_e2e_models")
        e2e_model_store[key] = e2e_weights.write_user_files(e2e_dir, e2e_manifest, root)
    return e2e_model_store[key]
