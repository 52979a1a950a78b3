"""The official X-NeMo crop geometry (reference §1 "Preprocessing" and "f_rts"), equal to the official
scripts/pose2vid_xnemo.py given the same face boxes: the driving crops, the reference's own motion crop, the ~2x
reference crop (VAE, ReferenceNet) and the CLIP input picture, with the official float casts, int() slices and
resize filters (PIL Lanczos for the motion-encoder and VAE inputs, skimage's anti-aliased linear resize for the
reference crop, PIL bicubic for CLIP). The pack departs from it only where the official would crash or lose the face;
each departure is named where it happens.

Pure room: numpy, torch, PIL and scipy.ndimage only. Boxes are (x0, y0, x1, y1) in source pixels, frames are ComfyUI
IMAGE tensors ([F, H, W, 3] float in 0..1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .constants import DEFAULT_CROP_SCALE, DEFAULT_SMOOTHING_SIGMA, MOTION_INPUT_SIZE
from .face_track import FaceTrack
from .payloads import CropInfo

F_RTS_MODES = ("official", "relative")
# How a non-square output is cut from the reference (square outputs are the official crop either way).
# official: the official square crop resized to the output, so the face is stretched to its shape (equal to the
# official code); widen: the box grown to the output's aspect, so the face keeps its proportions (departure).
REFERENCE_CROP_MODES = ("official", "widen")
DEFAULT_REFERENCE_CROP_MODE = "official"
OFFICIAL_REFERENCE_SIZE = 512  # crop_bbox_from_frames' image_shape: the reference crop is made at 512 px


def gaussian_filter1d(values: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing along axis 0 with 'reflect' boundaries (d c b a | a b c d | d c b a), the defaults of
    scipy.ndimage.gaussian_filter1d used by the official script; summed in float64 like scipy (cast the result to the
    input's float32 to get scipy's values bit for bit)."""
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
    return sum(w * padded[k : k + n] for k, w in enumerate(taps))


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy) of each box, [F, 2]."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def centre_jitter(centres: torch.Tensor) -> float:
    """Standard deviation (pixels) of the frame-to-frame centre displacement: 0 for a still or evenly moving crop."""
    steps = torch.diff(centres.double(), dim=0)
    if len(steps) < 2:
        return 0.0
    return float((steps - steps.mean(0)).pow(2).sum(1).mean().sqrt())


def _outside(box: Sequence[float], size: tuple[int, int]) -> bool:
    """The official check_oob: does the box leave [0, width-1] x [0, height-1]? (size = (height, width))"""
    return box[0] < 0 or box[1] < 0 or box[2] > size[1] - 1 or box[3] > size[0] - 1


def scale_box(box: Sequence[float], scale: float, size: tuple[int, int]) -> tuple[float, ...]:
    """The official scale_bb: a square `scale` x the longer side about the box centre, or the box itself when that
    square would leave the picture (size = (height, width))."""
    left, top, right, bot = (float(v) for v in box[:4])
    length = max(right - left, bot - top) * scale
    cx, cy = (left + right) * 0.5, (top + bot) * 0.5
    square = (cx - length / 2, cy - length / 2, cx + length / 2, cy + length / 2)
    return (left, top, right, bot) if _outside(square, size) else square


def box_about_centre(centre: Sequence[float], length: tuple[int, int], size: tuple[int, int]) -> tuple[float, ...]:
    """The official get_bbox_from_center: a (w, h) box about `centre`, shifted back inside [0, size-1] when it leaves.

    Departure, where the official would slice outside the frame (a box wider or taller than the frame): that axis is
    centred on the frame instead and the outside is padded black.
    """
    (cx, cy), (w, h) = centre, length
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if _outside(box, size):
        dx = max(-box[0], 0) + min(size[1] - 1 - box[2], 0)
        dy = max(-box[1], 0) + min(size[0] - 1 - box[3], 0)
        if w > size[1] - 1:
            dx = (size[1] - w) / 2 - box[0]
        if h > size[0] - 1:
            dy = (size[0] - h) / 2 - box[1]
        box = [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]
    return tuple(box)


@dataclass(frozen=True, kw_only=True)
class DrivingCrops:
    """Motion-encoder input for a driving clip.

    Attributes:
        crops (`Tensor[F, 3, size, size]`, float32 in [-1, 1]): the face crops, Lanczos-resized (PIL) as the official.
        crop_boxes (`Tensor[F, 4]`, float32, whole pixels): the pixel slice of each frame, the official int() of
            `box_float`; extends past the frame only where the crop is padded (departure).
        box_float (`Tensor[F, 4]`, float64): the official float crop box per frame (get_bbox_from_center).
        length (`tuple[int, int]`): (w, h) of every crop, fixed from frame 0 (even).
        frame0_box (`tuple[float, ...]`): frame 0's scaled face box that fixed `length` (official scale_bb).
        centre_track (`Tensor[F, 2]`, float32): smoothed crop centre (cx, cy).
        raw_centres (`Tensor[F, 2]`, float32): centre per frame before smoothing (frame 0: of `frame0_box`).
    """

    crops: torch.Tensor
    crop_boxes: torch.Tensor
    box_float: torch.Tensor
    length: tuple[int, int]
    frame0_box: tuple[float, ...]
    centre_track: torch.Tensor
    raw_centres: torch.Tensor

    @property
    def jitter(self) -> float:
        """Jitter (pixels) of the smoothed crop centre; see `centre_jitter`."""
        return centre_jitter(self.centre_track)

    def pixels_u8(self) -> torch.Tensor:
        """The resized crops as uint8 [F, size, size, 3] (what the official hands the motion encoder, before /255)."""
        return ((self.crops + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def driving_crops(
    frames: torch.Tensor,
    track: FaceTrack,
    scale: float = DEFAULT_CROP_SCALE,
    sigma: float = DEFAULT_SMOOTHING_SIGMA,
    size: int = MOTION_INPUT_SIZE,
) -> DrivingCrops:
    """The official driving crops (scripts/pose2vid_xnemo.py main()), for any frame size.

    Frame 0's face box scaled by `scale` (square, or the raw box when the square leaves the frame) fixes the crop
    size for the whole clip (rounded down to even); each frame's crop is centred on its face-box centre, the centres
    smoothed over time (float32, Gaussian sigma 5, reflect) and the box shifted back inside the frame; the pixel slice
    is the int() of its corners, resized to `size` with PIL's Lanczos filter.

    Departures, only where the official would fail: no left-square cut of landscape frames (the official keeps
    frame[:, :height] and loses a face on the right); a crop larger than the frame is centred and padded black instead
    of sliced out of range; frames without a face use the boxes the missing-face policy filled in.
    """
    height, width = int(frames.shape[1]), int(frames.shape[2])
    frame_size = (height, width)
    boxes = track.boxes.double().tolist()
    first = scale_box(boxes[0], scale, frame_size)
    length = (max(2, round(first[2] - first[0]) // 2 * 2), max(2, round(first[3] - first[1]) // 2 * 2))
    centres = [((first[0] + first[2]) * 0.5, (first[1] + first[3]) * 0.5)]
    centres += [((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5) for b in boxes[1:]]
    raw = np.asarray(centres, dtype=np.float32)
    smooth = gaussian_filter1d(raw, sigma).astype(np.float32)
    box_float = [box_about_centre(c, length, frame_size) for c in smooth.tolist()]
    slices = [tuple(int(v) for v in b) for b in box_float]
    crops = torch.empty(len(slices), size, size, 3, dtype=torch.uint8)
    for i, box in enumerate(slices):
        crops[i] = torch.from_numpy(lanczos_resize(_slice_u8(frames[i], box), size, size))
    return DrivingCrops(
        crops=crops.permute(0, 3, 1, 2).float() / 255 * 2 - 1,
        crop_boxes=torch.tensor(slices, dtype=torch.float32),
        box_float=torch.tensor(box_float, dtype=torch.float64),
        length=length,
        frame0_box=first,
        centre_track=torch.from_numpy(smooth),
        raw_centres=torch.from_numpy(raw),
    )


def to_u8(image: torch.Tensor) -> np.ndarray:
    """IMAGE [H, W, 3] 0..1 -> uint8 numpy (a decoded video frame comes back exactly)."""
    return (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def _slice_u8(image: torch.Tensor | np.ndarray, box: Sequence[int]) -> np.ndarray:
    """image[y0:y1, x0:x1] as uint8; parts outside the picture are black (the official never slices outside)."""
    src = image if isinstance(image, np.ndarray) else to_u8(image)
    x0, y0, x1, y1 = box
    if x0 >= 0 and y0 >= 0 and x1 <= src.shape[1] and y1 <= src.shape[0]:
        return np.ascontiguousarray(src[y0:y1, x0:x1])
    out = np.zeros((max(y1 - y0, 1), max(x1 - x0, 1), 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, src.shape[1]), min(y1, src.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = src[sy0:sy1, sx0:sx1]
    return out


def lanczos_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] -> [height, width, 3] with PIL's Lanczos filter: diffusers' VaeImageProcessor resize, which
    the official uses for every motion-encoder input and the VAE input."""
    image = Image.fromarray(pixels)
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return np.array(image)


def skimage_resize_u8(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] -> [height, width, 3] as the official reference crop is made:
    img_as_ubyte(skimage.transform.resize(crop, (height, width), anti_aliasing=True)) of scikit-image 0.22 (to
    float in 0..1, a Gaussian of sigma (factor - 1) / 2 on axes that shrink, linear zoom on pixel areas with mirrored
    edges, clipped to the input's range, rint(x * 255)), written here with scipy.ndimage."""
    image = pixels.astype(np.float64) * (1.0 / 255)
    factors = np.divide(image.shape, (height, width, image.shape[2]))
    if height < image.shape[0] or width < image.shape[1]:
        image_f = ndimage.gaussian_filter(image, np.maximum(0, (factors - 1) / 2), cval=0, mode="mirror")
    else:
        image_f = image
    out = ndimage.zoom(image_f, [1 / f for f in factors], order=1, mode="mirror", cval=0, grid_mode=True)
    np.clip(out, image.min(), image.max(), out=out)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _aspect_box(face_box: Sequence[float], increase: float) -> tuple[int, int, int, int]:
    """The official compute_aspect_preserved_bbox: each side grown by `increase` of the box (more on the short side
    so the result is square: ~2x the face at 0.5), corners truncated by int()."""
    left, top, right, bot = (float(v) for v in face_box[:4])
    width, height = max(right - left, 1e-6), max(bot - top, 1e-6)
    grow_w = max(increase, ((1 + 2 * increase) * height - width) / (2 * width))
    grow_h = max(increase, ((1 + 2 * increase) * width - height) / (2 * height))
    return (
        int(left - grow_w * width),
        int(top - grow_h * height),
        int(right + grow_w * width),
        int(bot + grow_h * height),
    )


def _out_of_frame(box: Sequence[int], size: tuple[int, int]) -> tuple[int, int, int, int, bool]:
    """The official check_oob_new: how far each side leaves the frame, and whether any does."""
    left, right, top, bot = -box[0], box[2] - size[1], -box[1], box[3] - size[0]
    return left, right, top, bot, max(left, right, top, bot) > 0


def _shift_inside(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[bool, tuple[int, int, int, int]]:
    """The official get_bbox shift: per axis, move the box in when that alone brings the whole box inside."""
    left, top, right, bot = box
    lo, ro, to, bo, outside = _out_of_frame(box, size)
    if outside:
        if lo > 0 and ro + lo <= 0:
            outside = _out_of_frame((left + lo, top, right + lo, bot), size)[-1]
            if not outside:
                left, right = left + lo, right + lo
        elif ro > 0 and ro + lo <= 0:
            outside = _out_of_frame((left - ro, top, right - ro, bot), size)[-1]
            if not outside:
                left, right = left - ro, right - ro
        if to > 0 and to + bo <= 0:
            outside = _out_of_frame((left, top + to, right, bot + to), size)[-1]
            if not outside:
                top, bot = top + to, bot + to
        elif bo > 0 and to + bo <= 0:
            outside = _out_of_frame((left, top - bo, right, bot - bo), size)[-1]
            if not outside:
                top, bot = top - bo, bot - bo
    return outside, (left, top, right, bot)


@dataclass(frozen=True, kw_only=True)
class ReferenceCrop:
    """The official reference crop (crop_bbox_from_frames(..., increase_area=0.5, enable_oob=True)).

    Attributes:
        pixels (`np.ndarray[512, 512, 3]`, uint8): what the VAE, the ReferenceNet and CLIP see.
        aspect_box: the ~2x aspect-preserved box (official compute_aspect_preserved_bbox).
        box: that box after the official shift into the picture, in picture pixels; may still leave it, then
            `pad` black pixels were added on every side before slicing.
        pad: the constant padding (0 when the box lies inside).
    """

    pixels: np.ndarray
    aspect_box: tuple[int, int, int, int]
    box: tuple[int, int, int, int]
    pad: int


def official_reference_crop(
    image_u8: np.ndarray, face_box: Sequence[float], size: int = 512, increase: float = 0.5
) -> ReferenceCrop:
    """The reference picture cut the official way: the ~2x aspect-preserved box around the face, shifted inside when
    it fits, else the picture padded black by the largest overshoot on all sides; resized to `size` x `size` the
    skimage way (`skimage_resize_u8`). Input: uint8 [H, W, 3]."""
    frame = (int(image_u8.shape[0]), int(image_u8.shape[1]))
    aspect = _aspect_box(face_box, increase)
    outside, box = _shift_inside(aspect, frame)
    pad = max(_out_of_frame(box, frame)[:4]) if outside else 0
    pixels = _slice_u8(image_u8, box)  # black outside = the official np.pad(constant 0) then slice
    return ReferenceCrop(pixels=skimage_resize_u8(pixels, size, size), aspect_box=aspect, box=box, pad=pad)


def clip_input_crop(reference_pixels: np.ndarray) -> np.ndarray:
    """The official CLIP input picture: the 512 px reference crop resized to 224 x 224 with PIL's default filter
    (bicubic); CLIPImageProcessor then only scales to 0..1 and normalises with the OpenAI CLIP mean and std."""
    return np.asarray(Image.fromarray(reference_pixels).resize((224, 224), Image.BICUBIC))


def reference_box(
    face_box: Sequence[float], image_size: tuple[int, int], height: int, width: int, increase: float = 0.5
) -> tuple[int, int, int, int]:
    """Reference box of crop mode `widen` (departure: the official always crops a square and stretches it): the
    official ~2x box with its short side grown to the output's aspect, shifted inside per axis where it fits."""
    x0, y0, x1, y1 = _aspect_box(face_box, increase)
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


def reference_crop(
    image: torch.Tensor,
    face_box: Sequence[float],
    height: int,
    width: int,
    increase: float = 0.5,
    mode: str = DEFAULT_REFERENCE_CROP_MODE,
) -> tuple[torch.Tensor, CropInfo]:
    """The reference crop fed to the VAE and the ReferenceNet: [height, width, 3] 0..1, plus where it came from.

    `official` (and every square output): the official crop (`official_reference_crop`, 512 px) Lanczos-resized to
    height x width, as the official pipeline's VaeImageProcessor does with -W/-H; a non-square output stretches the
    face to its shape. `widen`, non-square outputs only: the box grown to the output's aspect (`reference_box`), so
    the face keeps its proportions (departure: not the official picture).
    """
    if mode not in REFERENCE_CROP_MODES:
        raise ValueError(f"crop_mode is {mode!r}: pick one of {', '.join(REFERENCE_CROP_MODES)}")
    image = image[0] if image.ndim == 4 else image
    pixels = to_u8(image)
    size = (int(pixels.shape[0]), int(pixels.shape[1]))
    if height == width or mode == "official":
        official = official_reference_crop(pixels, face_box, OFFICIAL_REFERENCE_SIZE, increase)
        crop, box = lanczos_resize(official.pixels, height, width), official.box
    else:
        box = reference_box(face_box, size, height, width, increase)
        crop = skimage_resize_u8(_slice_u8(pixels, box), height, width)
    return torch.from_numpy(np.ascontiguousarray(crop)).float() / 255, CropInfo(
        box=box, image_size=size, crop_size=(height, width), face_box=tuple(float(v) for v in face_box[:4])
    )


def reference_motion_crop(
    image: torch.Tensor, face_box: Sequence[float], scale: float = DEFAULT_CROP_SCALE, size: int = 224
) -> torch.Tensor:
    """The reference's own motion crop (the negative branch): [1, 3, size, size] in [-1, 1].

    Official: the `scale` x square about the face (`scale_box`), or the raw face box when that square leaves the
    picture; int() corners, numpy slicing (a box past the right/bottom edge is cut there), Lanczos to `size`.
    """
    image = image[0] if image.ndim == 4 else image
    pixels = to_u8(image)
    left, top, right, bot = (max(0, int(v)) for v in scale_box(face_box, scale, pixels.shape[:2]))
    crop = np.ascontiguousarray(pixels[top:bot, left:right])
    if crop.size == 0:
        raise ValueError(f"the reference face box {tuple(face_box[:4])} lies outside the picture")
    resized = torch.from_numpy(lanczos_resize(crop, size, size))
    return (resized.permute(2, 0, 1).float() / 255 * 2 - 1).unsqueeze(0)


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
