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


def test_unmodified_crop_round_trips_exactly(portrait):
    _, info = reference_crop(portrait, FACE_BOX, 512, 512)
    x0, y0, x1, y1 = info.box
    crop, info = reference_crop(portrait, FACE_BOX, y1 - y0, x1 - x0)  # crop at the box's own size: no resampling
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
    _, info = reference_crop(portrait, FACE_BOX, 512, 512)
    x0, y0, x1, y1 = info.box
    crop, info = reference_crop(portrait, FACE_BOX, y1 - y0, x1 - x0)
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
