"""Draw the pack's registry icon, web/icon.png (400 x 400): a face that follows a motion path. Our own drawing.

    .venv/bin/python scripts/make_icon.py [--out web/icon.png]

The registry shows `[tool.comfy] Icon` (pyproject.toml), which points at this file on the main branch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 400
SUPERSAMPLE = 4  # drawn at 4x, then shrunk: smooth edges without an anti-aliasing pass
TOP, BOTTOM = (24, 32, 64), (92, 38, 112)
INK = (36, 40, 70)


def draw_icon(size: int = SIZE) -> Image.Image:
    s = size * SUPERSAMPLE
    u = s / 400  # the drawing is laid out on a 400 x 400 grid

    ramp = Image.linear_gradient("L").resize((s, s))
    img = Image.composite(Image.new("RGB", (s, s), BOTTOM), Image.new("RGB", (s, s), TOP), ramp)
    d = ImageDraw.Draw(img)

    # the driving motion: fading outlines of the head along its path, and speed lines
    for i, (cx, cy) in enumerate([(118, 236), (160, 212), (206, 200)]):
        shade = 70 + 30 * i
        d.ellipse(
            [(cx - 58) * u, (cy - 72) * u, (cx + 58) * u, (cy + 72) * u],
            outline=(shade, shade + 40, 200),
            width=round(5 * u),
        )
    for k in range(3):
        y = (176 + 34 * k) * u
        d.line([(36 * u, y + 10 * u * k), (78 * u, y + 6 * u * k)], fill=(120, 200, 255), width=round(7 * u))

    # the animated portrait: eyes, brows and an open smile, the expression the motion carries
    cx, cy = 262, 190
    d.ellipse([(cx - 70) * u, (cy - 88) * u, (cx + 70) * u, (cy + 88) * u], fill=(245, 236, 226))
    for ex in (cx - 27, cx + 27):
        d.ellipse([(ex - 9) * u, (cy - 22) * u, (ex + 9) * u, (cy - 4) * u], fill=INK)
        d.arc([(ex - 16) * u, (cy - 44) * u, (ex + 16) * u, (cy - 20) * u], 200, 340, fill=INK, width=round(5 * u))
    d.chord([(cx - 32) * u, (cy + 14) * u, (cx + 32) * u, (cy + 58) * u], 0, 180, fill=(200, 60, 90))

    font = ImageFont.load_default(size=round(64 * u))
    text = "X-NeMo"
    d.text(((s - d.textlength(text, font=font)) / 2, 318 * u), text, font=font, fill=(255, 255, 255))

    mask = Image.new("L", (s, s), 0)  # rounded corners, transparent outside
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, s - 1, s - 1], radius=round(64 * u), fill=255)
    icon = img.resize((size, size), Image.LANCZOS).convert("RGBA")
    icon.putalpha(mask.resize((size, size), Image.LANCZOS))
    return icon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "web" / "icon.png")
    args = parser.parse_args()
    draw_icon().save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
