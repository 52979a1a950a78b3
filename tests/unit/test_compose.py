"""Paste-back of animated crops into the original picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from xnemo_pack.xnemo_core.pure.compose import paste_back
from xnemo_pack.xnemo_core.pure.face_crop import reference_crop
from xnemo_pack.xnemo_core.pure.payloads import CropInfo

FACE_BOX = (105.0, 78.0, 398.0, 371.0)  # the Haar box of ref_image.png, fixed so these tests need no detector


@pytest.fixture(scope="module")
def portrait(media_dir: Path) -> torch.Tensor:
    image = cv2.cvtColor(cv2.imread(str(media_dir / "ref_image.png")), cv2.COLOR_BGR2RGB)
    return (torch.from_numpy(image).float() / 255)[None]


def _visible(box, height, width):
    x0, y0, x1, y1 = box
    return slice(max(y0, 0), min(y1, height)), slice(max(x0, 0), min(x1, width))


def box_pixels(portrait: torch.Tensor, box) -> torch.Tensor:
    """The picture's pixels inside `box` (black where the box leaves it), at the box's own size: no resampling."""
    x0, y0, x1, y1 = box
    height, width = portrait.shape[1:3]
    out = torch.zeros(y1 - y0, x1 - x0, 3)
    rows, cols = _visible(box, height, width)
    out[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = portrait[0, rows, cols]
    return out


def own_size_crop(portrait: torch.Tensor):
    """The official reference box of the portrait (from reference_crop) and its pixels at the box's own size."""
    _, official = reference_crop(portrait, FACE_BOX, 512, 512)
    x0, y0, x1, y1 = official.box
    info = CropInfo(box=official.box, image_size=official.image_size, crop_size=(y1 - y0, x1 - x0))
    return box_pixels(portrait, official.box), info


def test_unmodified_crop_round_trips_exactly(portrait):
    crop, info = own_size_crop(portrait)  # the official box leaves the picture on the left and top
    assert info.box[0] < 0 and info.box[1] < 0
    out, mask = paste_back(crop[None].repeat(2, 1, 1, 1), info, portrait, feather=0.1, color_match=False)
    assert out.shape == (2, 512, 512, 3) and mask.shape == (2, 512, 512)
    assert (out - portrait).abs().max() < 1e-6


def test_resized_crop_round_trips_within_resampling_error(portrait):
    crop, info = reference_crop(portrait, FACE_BOX, 512, 512)  # 585 px box squeezed to 512, then back
    out, mask = paste_back(crop[None], info, portrait, feather=0.1, color_match=False)
    error = (out - portrait).abs()
    # Down- then up-sampling by 1.14x blurs edges slightly; bilinear/area resampling keeps the mean error well
    # under one 8-bit level and single pixels under ~0.25 at the black padding's edge.
    assert error.mean() < 2 / 255 and error.max() < 0.3
    assert (mask[0] == 1).float().mean() > 0.5


def test_borders_are_respected():
    original = torch.rand(1, 256, 320, 3)
    crop = CropInfo(box=(-50, -30, 200, 220), image_size=(256, 320), crop_size=(125, 125))
    frames = torch.zeros(3, 125, 125, 3)
    out, mask = paste_back(frames, crop, original, feather=0.1, color_match=False)
    assert out.shape == (3, 256, 320, 3) and mask.shape == (3, 256, 320)
    rows, cols = _visible(crop.box, 256, 320)
    outside = torch.ones(256, 320, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.equal(out[:, outside], original.expand(3, -1, -1, -1)[:, outside])  # untouched outside the box
    assert (mask[:, outside] == 0).all()
    # Edges past the image border are not feathered: the image corner is fully pasted...
    assert mask[0, 0, 0] == 1 and out[0, 0, 0].abs().max() == 0
    # ...while the inner right and bottom edges ramp over 10 % of the 250 px box (25 px).
    assert mask[0, 100, 199] < 0.05 and mask[0, 100, 170] == 1 and 0 < mask[0, 100, 187] < 1
    assert mask[0, 219, 100] < 0.05 and mask[0, 190, 100] == 1


def test_hard_edge_and_blend():
    original = torch.full((1, 64, 64, 3), 0.25)
    crop = CropInfo(box=(16, 16, 48, 48), image_size=(64, 64), crop_size=(32, 32))
    out, mask = paste_back(torch.ones(1, 32, 32, 3), crop, original, feather=0.0, color_match=False)
    assert torch.equal(mask[0, 16:48, 16:48], torch.ones(32, 32)) and mask.sum() == 32 * 32
    out, mask = paste_back(torch.ones(1, 32, 32, 3), crop, original, feather=0.25, color_match=False)
    assert torch.allclose(out[0, ..., 0], 0.25 + 0.75 * mask[0])  # out = original * (1 - m) + crop * m


def test_color_match_undoes_a_tint(portrait):
    crop, info = own_size_crop(portrait)
    rows, cols = _visible(info.box, 512, 512)
    tinted = crop * torch.tensor([0.7, 0.9, 0.8]) + torch.tensor([0.2, 0.0, 0.1])  # per-channel affine, no clipping
    plain, _ = paste_back(tinted[None], info, portrait, feather=0.0, color_match=False)
    matched, _ = paste_back(tinted[None], info, portrait, feather=0.0, color_match=True)
    assert (plain - portrait).abs().mean() > 0.05
    # Only the visible part is matched (the crop's black padding is not in the statistics), so the affine tint is
    # undone up to float error.
    assert (matched[0, rows, cols] - portrait[0, rows, cols]).abs().max() < 1e-3


def test_original_per_frame_and_resized_original():
    crop = CropInfo(box=(10, 20, 50, 60), image_size=(100, 80), crop_size=(40, 40))
    frames = torch.rand(4, 40, 40, 3)
    out, _ = paste_back(frames, crop, torch.rand(4, 100, 80, 3), feather=0.0, color_match=False)
    assert torch.allclose(out[:, 20:60, 10:50], frames)
    with pytest.raises(ValueError, match="one image or one per animated frame"):
        paste_back(frames, crop, torch.rand(3, 100, 80, 3), feather=0.0, color_match=False)
    # The same picture at twice the size: the box scales with it.
    _, mask = paste_back(frames, crop, torch.rand(1, 200, 160, 3), feather=0.0, color_match=False)
    rows, cols = torch.nonzero(mask[0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 119, 20, 99)
    with pytest.raises(ValueError, match="connect the same image"):
        paste_back(frames, crop, torch.rand(1, 100, 100, 3), feather=0.0, color_match=False)


_MEASURE = r"""
import ctypes, gc, importlib.util, json, sys
from pathlib import Path
import torch
root = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("pure", root / "__init__.py", submodule_search_locations=[str(root)])
sys.modules["pure"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from pure.compose import paste_back
from pure.payloads import CropInfo

def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) * 1024

frames, color = int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(1)
crops = torch.rand(frames, 256, 256, 3)
original = torch.rand(1, 270, 480, 3)
info = CropInfo(box=(140, 20, 380, 260), image_size=(270, 480), crop_size=(256, 256), face_box=None)
paste_back(crops[:2], info, original, color_match=color)  # warm-up: first-call allocations of torch itself
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
open("/proc/self/clear_refs", "w").write("5")  # reset the RSS high-water mark
base = kib("VmRSS")
out, mask = paste_back(crops, info, original, color_match=color)
print(json.dumps({"peak": kib("VmHWM") - base, "output": out.numel() * out.element_size(),
                  "mask": mask.untyped_storage().nbytes()}))
"""


@pytest.mark.parametrize("color_match", [False, True])
def test_paste_back_memory_is_the_output_plus_a_constant(tmp_path, color_match):
    """Issue 14: memory beyond the output must not grow with the clip (1,000 frames at 1080p: 24.9 GB of output and
    no more than a chunk besides). Measured as the RSS high-water mark of a fresh process, at two clip lengths."""
    import json
    import os
    import subprocess
    import sys

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak")
    pure = Path(__file__).resolve().parents[2] / "xnemo_core" / "pure"
    runs = {}
    for frames in (64, 256):
        # glibc would keep freed chunk buffers in its heap (the RSS then grows with allocator history, not with
        # live memory): a fixed mmap threshold hands every large block back when it is freed.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(pure), str(frames), str(int(color_match))],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            env=env,
        )
        runs[frames] = json.loads(result.stdout.strip().splitlines()[-1])
    mib = 1024**2
    chunk = 16 * 240 * 240 * 3 * 4  # one chunk of crops resized to the 240 x 240 box (compose._CHUNK frames)
    for frames, r in runs.items():
        print(
            f"{frames} frames, color_match {color_match}: output {r['output'] / mib:.0f} MiB, peak "
            f"+{r['peak'] / mib:.0f} MiB, beyond the output {(r['peak'] - r['output']) / mib:.1f} MiB"
        )
        assert r["mask"] == 270 * 480 * 4, "the mask is one frame, broadcast"
        assert r["peak"] - r["output"] <= 6 * chunk  # one chunk: its resize, clamp and blend temporaries
    growth = (runs[256]["peak"] - runs[256]["output"]) - (runs[64]["peak"] - runs[64]["output"])
    assert abs(growth) <= 8 * mib, f"memory beyond the output grew by {growth / mib:.1f} MiB with 4x the frames"
