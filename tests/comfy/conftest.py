"""In-process tests: what nodes save (Sample Animation's resume checkpoints) goes to a per-test output folder, never
to the ComfyUI checkout's own `output/`; `loaded` is Load X-NeMo on the fixture's tiny official-format files."""

from __future__ import annotations

import folder_paths
import pytest

from xnemo_pack.nodes import register_model_folder
from xnemo_pack.nodes.loader import XNeMoLoader


@pytest.fixture(autouse=True)
def output_dir(tmp_path):
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    try:
        yield tmp_path / "output"
    finally:
        folder_paths.set_output_directory(before)


@pytest.fixture(scope="module")
def loaded(fixture_dir):
    """(MODEL, XNEMO) from Load X-NeMo on the fixture's four files, fp32."""
    register_model_folder()
    folder_paths.add_model_folder_path("x-nemo", str(fixture_dir))
    names = ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")
    return XNeMoLoader.execute(*(f"xnemo_{n}.pth" for n in names), "fp32").args
