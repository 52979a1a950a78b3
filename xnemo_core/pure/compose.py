"""Paste-back of animated crops into the original picture (feathered mask, optional colour match).

Pure room: torch only. The official release has no paste-back (its output is the crop); this follows the
Cropper -> Composite idea of LivePortrait's ComfyUI nodes with the reference crop's `CropInfo`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .payloads import CropInfo

logger = logging.getLogger("xnemo")

_CHUNK = 16  # frames resized at once: bounds the memory of the up-scaled crops


def paste_back(
    frames: torch.Tensor, crop: CropInfo, original: torch.Tensor, feather: float = 0.1, color_match: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put animated crops back where the reference crop came from.

    Args:
        frames (`Tensor[F, h, w, 3]`, 0..1): animated crops (any size; resized to the crop box).
        crop (`CropInfo`): crop box in original pixels; may extend past the image (that part is dropped).
        original (`Tensor[1 or F, H, W, 3]`, 0..1): the picture the crop was taken from (one still, or one per frame).
        feather (`float`): width of the soft edge as a fraction of the crop box's shorter side (0 = hard edge).
            Box edges on or past the image border are not feathered: there is no seam to hide there.
        color_match (`bool`): shift the crops' per-channel mean and std to the original's inside the box.

    Returns:
        (`Tensor[F, H, W, 3]`, `Tensor[F, H, W]`): composited frames and the blend mask (1 = animated crop; one
        frame broadcast over F, read-only). Beyond the output, memory is bounded by one chunk of resized crops.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be an IMAGE batch [n, h, w, c], got {tuple(frames.shape)}")
    count = frames.shape[0]
    paster = PasteBack(crop, original, feather=feather, frames=count)
    paster.check_frames(frames)
    if color_match:
        paster.fit_colors(frames[i : i + _CHUNK] for i in range(0, count, _CHUNK))

    # Composite chunk by chunk into the output, the only full-clip buffer. The mask is the same for every frame:
    # one frame, broadcast (a view), so 1,000 frames at 1080p cost the 24.9 GB of output and not 8.3 GB more.
    out = original.float().expand(count, -1, -1, -1).clone()
    for start in range(0, count, _CHUNK):
        paster.blend_into(out[start : start + _CHUNK], frames[start : start + _CHUNK])
    return out, paster.mask.expand(count, -1, -1)


class PasteBack:
    """The paste-back of one clip, split so frames can come a chunk at a time (the streaming Save Video).

    The geometry, feathered mask and colour transfer are fixed once for the clip; `composite` then turns any run of
    animated frames into full frames, so memory is that run's, never the clip's. `paste_back` is this over a whole
    batch, and both give the same pixels.
    """

    def __init__(self, crop: CropInfo, original: torch.Tensor, feather: float = 0.1, frames: int | None = None):
        if original.ndim != 4:
            raise ValueError(f"original must be an IMAGE batch [n, h, w, c], got {tuple(original.shape)}")
        if frames is not None and original.shape[0] not in (1, frames):
            raise ValueError(
                f"original has {original.shape[0]} frames; give one image or one per animated frame ({frames})"
            )
        self.original = original
        img_h, img_w = original.shape[1:3]
        x0, y0, x1, y1 = _box_for(crop, img_h, img_w)
        self.box_h, self.box_w = y1 - y0, x1 - x0
        if self.box_w <= 0 or self.box_h <= 0:
            raise ValueError(f"crop box {crop.box} is empty")

        # 1. Visible part of the box, in image and in box coordinates.
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, img_w), min(y1, img_h)
        if ix1 <= ix0 or iy1 <= iy0:
            raise ValueError(f"crop box {crop.box} lies outside the {img_w}x{img_h} original")
        self.image_window = (slice(iy0, iy1), slice(ix0, ix1))
        self.box_window = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))

        # 2. Mask over the box: ramps from 0 at feathered edges to 1 inside.
        weight = _feather_mask(self.box_h, self.box_w, feather, inner=(x0 > 0, y0 > 0, x1 < img_w, y1 < img_h))
        self.weight = weight[self.box_window].to(original.device)
        self.mask = torch.zeros(img_h, img_w, device=original.device)
        self.mask[self.image_window] = self.weight
        self.transfer = None

    def check_frames(self, frames: torch.Tensor) -> None:
        if frames.ndim != 4 or frames.shape[-1] != self.original.shape[-1]:
            raise ValueError(
                f"frames of shape {tuple(frames.shape)} do not fit the original's {self.original.shape[-1]} "
                "channels; give IMAGE batches [n, h, w, c] of the same channels"
            )

    def crops(self, frames: torch.Tensor) -> torch.Tensor:
        """Animated frames resized to the box, its visible part only."""
        rows, cols = self.box_window
        return _resized(frames, self.box_h, self.box_w)[:, rows, cols]

    def fit_colors(self, chunks) -> None:
        """Colour transfer from all frames of the clip (an iterable of chunks), one transform for the whole clip so
        it cannot flicker."""
        rows, cols = self.image_window
        src = _stats((self.crops(chunk) for chunk in chunks), self.weight)
        dst = _stats([self.original[:, rows, cols].float()], self.weight)
        self.transfer = [tuple(t.to(self.original.device) for t in pair) for pair in (src, dst)]

    def blend_into(self, out: torch.Tensor, frames: torch.Tensor) -> None:
        """Blend animated `frames` into `out` (their original frames, float32), in place: exact at weight 0 and 1."""
        part = self.crops(frames).to(self.original.device)
        if self.transfer is not None:
            (src_mean, src_std), (dst_mean, dst_std) = self.transfer
            part = ((part - src_mean) / src_std * dst_std + dst_mean).clamp(0, 1)
        rows, cols = self.image_window
        out[:, rows, cols].lerp_(part, self.weight.unsqueeze(-1))

    def composite(self, frames: torch.Tensor, start: int) -> torch.Tensor:
        """Full frames [n, H, W, 3] for animated `frames`, which are frames start..start+n of the clip."""
        self.check_frames(frames)
        count = frames.shape[0]
        if self.original.shape[0] == 1:
            out = self.original.float().expand(count, -1, -1, -1).clone()
        else:
            out = self.original[start : start + count].float().clone()
            if out.shape[0] != count:
                raise ValueError(
                    f"original has {self.original.shape[0]} frames but frame {start + count - 1} was asked for; "
                    "give one image or one per animated frame"
                )
        self.blend_into(out, frames)
        return out


def _box_for(crop: CropInfo, img_h: int, img_w: int) -> tuple[int, int, int, int]:
    """The crop box in the given original's pixels (scaled when the original was resized since cropping)."""
    x0, y0, x1, y1 = (int(v) for v in crop.box)
    src_h, src_w = crop.image_size
    if (src_h, src_w) == (img_h, img_w):
        return x0, y0, x1, y1
    if abs(src_w / src_h - img_w / img_h) > 0.01 * img_w / img_h:
        raise ValueError(
            f"original is {img_w}x{img_h} but the crop was taken from a {src_w}x{src_h} image; connect "
            "the same image you gave to Reference Condition"
        )
    sx, sy = img_w / src_w, img_h / src_h
    logger.info(
        "X-NeMo paste back: original resized from %dx%d to %dx%d; scaling the crop box", src_w, src_h, img_w, img_h
    )
    return round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)


def _resized(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if frames.shape[1:3] == (height, width):
        return frames.float()
    nchw = frames.float().permute(0, 3, 1, 2)
    shrink = height * width < frames.shape[1] * frames.shape[2]
    out = F.interpolate(
        nchw, size=(height, width), mode="bilinear" if shrink else "bicubic", align_corners=False, antialias=shrink
    )
    return out.permute(0, 2, 3, 1).clamp(0, 1)


def _feather_mask(height: int, width: int, feather: float, inner: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """[height, width] in 0..1; `inner` says which edges (left, top, right, bottom) lie inside the image."""
    ramp = feather * min(height, width)
    if ramp <= 0:
        return torch.ones(height, width)

    def edge(n: int, near: bool, far: bool) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32) + 0.5  # pixel centres
        dist = torch.full((n,), float("inf"))
        if near:
            dist = torch.minimum(dist, pos)
        if far:
            dist = torch.minimum(dist, n - pos)
        t = (dist / ramp).clamp(0, 1)
        return t * t * (3 - 2 * t)  # smoothstep: no visible kink where the ramp ends

    left, top, right, bottom = inner
    return torch.minimum(edge(height, top, bottom)[:, None], edge(width, left, right)[None, :])


def _stats(chunks, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted per-channel mean and std over all frames and pixels of an iterable of [n, h, w, c] chunks."""
    total, first, second = 0.0, 0.0, 0.0
    for images in chunks:
        w = weight.to(images.device)[:, :, None].double()
        for image in images.double():  # frame by frame: the sums do not depend on how the clip was chunked
            total = total + w.sum()
            first = first + (image * w).sum((0, 1))
            second = second + (image**2 * w).sum((0, 1))
    total = max(float(total), 1e-8)
    mean = first / total
    var = (second / total - mean**2).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(1e-4)
