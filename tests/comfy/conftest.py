"""In-process tests write what nodes save (Sample Animation's resume checkpoints) to a per-test output folder, never
to the ComfyUI checkout's own `output/`."""

from __future__ import annotations

import folder_paths
import pytest


@pytest.fixture(autouse=True)
def output_dir(tmp_path):
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    try:
        yield tmp_path / "output"
    finally:
        folder_paths.set_output_directory(before)
