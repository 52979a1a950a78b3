"""The demo's contact sheet (scripts/demo.py make_contact_sheet): three labelled rows at the same times."""

from __future__ import annotations

from demo import SHEET_FRAMES, SHEET_HEIGHT, make_contact_sheet
from PIL import Image


def test_contact_sheet_layout():
    reference = Image.new("RGB", (512, 512), (200, 0, 0))
    track = [Image.new("RGB", (640, 360), (0, 10 * i, 0)) for i in range(10)]  # frame i is recognisable
    output = [Image.new("RGB", (640, 360), (0, 0, 10 * i)) for i in range(10)]
    sheet = make_contact_sheet(reference, track, output, tiny=True)
    pad, label = 8, 24
    assert sheet.height == pad + 3 * (label + SHEET_HEIGHT + pad)
    width = round(640 * SHEET_HEIGHT / 360)
    assert sheet.width == pad + SHEET_FRAMES * (width + pad)
    y_ref, y_track, y_out = (pad + label + k * (label + SHEET_HEIGHT + pad) + SHEET_HEIGHT // 2 for k in range(3))
    assert sheet.getpixel((pad + 10, y_ref)) == (200, 0, 0)
    # first and last frames and two between, the same times in both rows
    for k, frame in enumerate((0, 3, 6, 9)):
        x = pad + k * (width + pad) + width // 2
        assert sheet.getpixel((x, y_track)) == (0, 10 * frame, 0)
        assert sheet.getpixel((x, y_out)) == (0, 0, 10 * frame)
