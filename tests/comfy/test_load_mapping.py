"""What stays memory-mapped after Load X-NeMo (issue 21).

The official files are fp16 with a few fp32 tensors (the temporal layers' frame code). Loaded as fp32, every weight
is converted, and a single tensor left as a view of its file kept the whole file mapped and resident beside the
converted copy: about 1 GB for the official temporal file. Loaded in the file's own dtype, the mapped file is the
weights, and stays mapped.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES


@pytest.fixture(scope="module")
def fp16_files(fixture_dir, tmp_path_factory) -> XNeMoFiles:
    """The tiny set written as the official files are: fp16, the frame code `pe` fp32, torch's zip format."""
    out = tmp_path_factory.mktemp("fp16_files")
    for stem in CHECKPOINT_FILES.values():
        sd = torch.load(fixture_dir / f"{stem}.pth", map_location="cpu", weights_only=True)
        half = {k: v.half() if v.is_floating_point() and not k.endswith("pe") else v for k, v in sd.items()}
        torch.save(half, out / f"{stem}.pth")
    return XNeMoFiles(**{role: str(out / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})


def mapped(files: XNeMoFiles) -> set[str]:
    maps = Path("/proc/self/maps").read_text()
    return {Path(p).name for p in vars(files).values() if p in maps}


def test_converting_load_keeps_no_file_mapped(fp16_files):
    loaded = load_xnemo(fp16_files, "fp32")
    assert mapped(fp16_files) == set()
    del loaded
    gc.collect()


def test_load_in_the_files_dtype_keeps_them_mapped(fp16_files):
    """The mapping is the weights here (no private copy); also shows the check above sees mappings."""
    loaded = load_xnemo(fp16_files, "fp16")
    assert {"xnemo_denoising_unet.pth", "xnemo_reference_unet.pth"} <= mapped(fp16_files)
    del loaded
    gc.collect()
