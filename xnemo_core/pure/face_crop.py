"""The official X-NeMo crop geometry (reference §1 "Preprocessing" and "f_rts"): driving squares, the reference crop,
the motion-encoder crops and the box parameter f_rts.

Pure room: numpy, torch and OpenCV (resizing) only. Boxes are (x0, y0, x1, y1) in source pixels, frames are ComfyUI IMAGE tensors
([F, H, W, 3] float in 0..1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from .constants import DEFAULT_CROP_SCALE, DEFAULT_SMOOTHING_SIGMA, MOTION_INPUT_SIZE
from .face_track import FaceTrack
from .payloads import CropInfo

F_RTS_MODES = ("official", "relative")


def gaussian_filter1d(values: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing along axis 0 with 'reflect' boundaries (d c b a | a b c d | d c b a), the defaults of
    scipy.ndimage.gaussian_filter1d used by the official script."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) == 0:
        return values.copy()
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    n = len(values)
    index = np.mod(np.arange(-radius, n + radius), 2 * n)
    index = np.where(index >= n, 2 * n - 1 - index, index)  # reflection repeats for clips shorter than the kernel
    padded = values[index]
    return sum(w * padded[k:k + n] for k, w in enumerate(taps))


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy) of each box, [F, 2]."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def centre_jitter(centres: torch.Tensor) -> float:
    """Standard deviation (pixels) of the frame-to-frame centre displacement: 0 for a still or evenly moving crop."""
    steps = torch.diff(centres.double(), dim=0)
    if len(steps) < 2:
        return 0.0
    return float((steps - steps.mean(0)).pow(2).sum(1).mean().sqrt())


@dataclass(frozen=True, kw_only=True)
class DrivingCrops:
    """Motion-encoder input for a driving clip.

    Attributes:
        crops (`Tensor[F, 3, size, size]`, float32 in [-1, 1]): the square face crops.
        crop_boxes (`Tensor[F, 4]`, float32, whole pixels): crop box per frame; may extend past the frame when the
            square is larger than the frame (padded with black).
        centre_track (`Tensor[F, 2]`): smoothed crop centre (cx, cy) before it was kept inside the frame.
        raw_centres (`Tensor[F, 2]`): face-box centre per frame before smoothing.
    """

    crops: torch.Tensor
    crop_boxes: torch.Tensor
    centre_track: torch.Tensor
    raw_centres: torch.Tensor

    @property
    def jitter(self) -> float:
        """Jitter (pixels) of the smoothed crop centre; see `centre_jitter`."""
        return centre_jitter(self.centre_track)


def driving_crops(frames: torch.Tensor, track: FaceTrack, scale: float = DEFAULT_CROP_SCALE,
                  sigma: float = DEFAULT_SMOOTHING_SIGMA, size: int = MOTION_INPUT_SIZE) -> DrivingCrops:
    """Official driving crop for any frame size: a square of fixed side (frame-0 face x `scale`, even), following the
    temporally smoothed face centre and kept inside the frame.

    Departures: no left-square cut of landscape frames; the side is not replaced by the raw box when 1.1x would leave
    the frame (a square larger than the frame is centred and padded instead).
    """
    height, width = frames.shape[1:3]
    b0 = track.boxes[0].tolist()
    side = max(2, int(round(max(b0[2] - b0[0], b0[3] - b0[1]) * scale)) // 2 * 2)
    raw = box_centres(track.boxes).double()
    smooth = torch.from_numpy(gaussian_filter1d(raw.numpy(), sigma))
    x0 = [_place(c, side, width) for c in smooth[:, 0].tolist()]
    y0 = [_place(c, side, height) for c in smooth[:, 1].tolist()]
    crop_boxes = torch.tensor([[x, y, x + side, y + side] for x, y in zip(x0, y0)], dtype=torch.float32)
    crops = np.empty((frames.shape[0], size, size, 3), dtype=np.float32)
    for i, (x, y) in enumerate(zip(x0, y0)):
        crops[i] = _resized_crop(frames[i], (x, y, x + side, y + side), size, size).numpy()
    crops = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous() * 2 - 1
    return DrivingCrops(crops=crops, crop_boxes=crop_boxes, centre_track=smooth.float(), raw_centres=raw.float())


def _place(centre: float, side: int, limit: int) -> int:
    """Left/top edge of a `side` box centred on `centre`, shifted back inside [0, limit] (centred if it can't fit)."""
    if side >= limit:
        return (limit - side) // 2
    return min(max(int(round(centre - side / 2)), 0), limit - side)


def _resized_crop(image: torch.Tensor, box: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Crop `box` (whole pixels; black outside the image) and resize to [height, width, 3] float32 0..1."""
    x0, y0, x1, y1 = (int(v) for v in box)
    src = image.detach().cpu().float().numpy()
    out = np.zeros((y1 - y0, x1 - x0, src.shape[-1]), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, src.shape[1]), min(y1, src.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = src[sy0:sy1, sx0:sx1]
    if out.shape[:2] != (height, width):
        shrink = height * width < out.shape[0] * out.shape[1]
        out = np.clip(cv2.resize(out, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC),
                      0, 1)
    return torch.from_numpy(out)


def reference_box(face_box: Sequence[float], image_size: tuple[int, int], height: int, width: int,
                  increase: float = 0.5) -> tuple[int, int, int, int]:
    """Official aspect-preserved reference box: the face box grown by `increase` per side and squared (~2x the face),
    shifted inside the image along each axis where it fits.

    Departures: for a non-square output the short side is grown to the output's aspect so nothing is stretched;
    the shift is applied per axis (the official script shifts only when that alone brings the whole box inside).
    """
    left, top, right, bot = (float(v) for v in face_box[:4])
    fw, fh = max(right - left, 1.0), max(bot - top, 1.0)
    grow_w = max(increase, ((1 + 2 * increase) * fh - fw) / (2 * fw))
    grow_h = max(increase, ((1 + 2 * increase) * fw - fh) / (2 * fh))
    x0, y0 = int(left - grow_w * fw), int(top - grow_h * fh)
    x1, y1 = int(right + grow_w * fw), int(bot + grow_h * fh)
    bw, bh = x1 - x0, y1 - y0
    if bw * height < bh * width:
        grow = round(bh * width / height) - bw
        x0, x1 = x0 - grow // 2, x1 + grow - grow // 2
    elif bw * height > bh * width:
        grow = round(bw * height / width) - bh
        y0, y1 = y0 - grow // 2, y1 + grow - grow // 2
    img_h, img_w = image_size
    if x1 - x0 <= img_w:
        shift = max(0, -x0) - max(0, x1 - img_w)
        x0, x1 = x0 + shift, x1 + shift
    if y1 - y0 <= img_h:
        shift = max(0, -y0) - max(0, y1 - img_h)
        y0, y1 = y0 + shift, y1 + shift
    return x0, y0, x1, y1


def reference_crop(image: torch.Tensor, face_box: Sequence[float], height: int, width: int,
                   increase: float = 0.5) -> tuple[torch.Tensor, CropInfo]:
    """The reference crop fed to the VAE, ReferenceNet and CLIP: [height, width, 3] 0..1, plus where it came from."""
    image = image[0] if image.ndim == 4 else image
    size = (int(image.shape[0]), int(image.shape[1]))
    box = reference_box(face_box, size, height, width, increase)
    crop = _resized_crop(image, box, height, width)
    return crop, CropInfo(box=box, image_size=size, crop_size=(height, width),
                          face_box=tuple(float(v) for v in face_box[:4]))


def reference_motion_crop(image: torch.Tensor, face_box: Sequence[float], scale: float = DEFAULT_CROP_SCALE,
                          size: int = 224) -> torch.Tensor:
    """Tight crop of the reference face for the negative motion branch: [1, 3, size, size] in [-1, 1].

    Official: a `scale`x square around the face, or the raw face box when the square would leave the image.
    """
    image = image[0] if image.ndim == 4 else image
    img_h, img_w = image.shape[:2]
    left, top, right, bot = (float(v) for v in face_box[:4])
    half = max(right - left, bot - top) * scale / 2
    cx, cy = (left + right) / 2, (top + bot) / 2
    square = (cx - half, cy - half, cx + half, cy + half)
    if not (square[0] < 0 or square[1] < 0 or square[2] > img_w - 1 or square[3] > img_h - 1):
        left, top, right, bot = square
    crop = _resized_crop(image, (int(left), int(top), int(right), int(bot)), size, size)
    return (crop.permute(2, 0, 1) * 2 - 1).unsqueeze(0)


def compute_f_rts(boxes: torch.Tensor, ref_box: Sequence[float] | None, mode: str = "official") -> torch.Tensor:
    """Per-frame box parameter f_rts, [F, 3] in (dy, dx, scale) order.

    "official": the constant [0, 0, 1] the released script uses. "relative": ((cy - cy_ref) / L_ref,
    (cx - cx_ref) / L_ref, L / L_ref) with L the longer side of the face box (the paper's definition).
    """
    if mode not in F_RTS_MODES:
        raise ValueError(f"f_rts mode {mode!r} is not one of {F_RTS_MODES}")
    frames = boxes.shape[0]
    if mode == "official":
        return torch.tensor([0.0, 0.0, 1.0]).repeat(frames, 1)
    if ref_box is None:
        raise ValueError("f_rts mode 'relative' needs a reference face box; connect a reference or use 'official'")
    ref = torch.as_tensor([float(v) for v in ref_box[:4]], dtype=torch.float64)
    b = boxes.double()
    ref_len = torch.maximum(ref[2] - ref[0], ref[3] - ref[1])
    length = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    dy = ((b[:, 1] + b[:, 3]) - (ref[1] + ref[3])) / 2 / ref_len
    dx = ((b[:, 0] + b[:, 2]) - (ref[0] + ref[2])) / 2 / ref_len
    return torch.stack([dy, dx, length / ref_len], dim=1).float()


