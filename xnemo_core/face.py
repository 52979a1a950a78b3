"""Face detection, tracking and the official X-NeMo crop geometry (reference §1 "Preprocessing" and "f_rts").

Pure room: numpy, torch and OpenCV only. Boxes are (x0, y0, x1, y1) in source pixels, frames are ComfyUI IMAGE
tensors ([F, H, W, 3] float in 0..1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np
import torch

from .errors import NoFaceError
from .payloads import CropInfo

logger = logging.getLogger("xnemo")

Detection = tuple[float, float, float, float, float]  # x0, y0, x1, y1, score (higher is better)

FACE_INDEX_MODES = ("largest", "left_to_right", "right_to_left", "top_to_bottom", "most_confident")
MISSING_FACE_POLICIES = ("interpolate", "hold", "error")
F_RTS_MODES = ("official", "relative")


class FaceDetector(Protocol):
    """Anything with `detect(image_rgb_u8[H, W, 3]) -> [(x0, y0, x1, y1, score), ...]`.

    A detector may also offer `detect_near(image, box)`, a cheaper search for a face about the size of `box`;
    `track_face` uses it when present and falls back to `detect` when it finds nothing.
    """

    def detect(self, image_rgb_u8: np.ndarray) -> list[Detection]: ...


class HaarFaceDetector:
    """OpenCV's Haar cascades (shipped with opencv-python): frontal, then both profiles when the frontal finds nothing.

    Replaces the official MediaPipe BlazeFace so the pack needs no mediapipe. Detection runs on a downscaled, histogram
    equalised grayscale image. A cascade only tries sizes a `scale_factor` step apart, so one pass puts a box's size
    off by up to ~9 %; `passes` runs at evenly spaced in-between scales and averages matching boxes (2 passes: ~4 %).
    The score is the cascade's neighbour count.
    """

    def __init__(self, max_side: int = 512, min_face: int = 24, min_neighbors: int = 5, profile: bool = True,
                 track_face_px: int = 96, scale_factor: float = 1.1, passes: int = 2) -> None:
        self.max_side = max_side
        self.min_face = min_face
        self.min_neighbors = min_neighbors
        self.track_face_px = track_face_px
        self.scale_factor = scale_factor
        self.passes = max(1, passes)
        self._frontal = _load_cascade("haarcascade_frontalface_default.xml")
        self._profile = _load_cascade("haarcascade_profileface.xml") if profile else None

    def detect(self, image_rgb_u8: np.ndarray) -> list[Detection]:
        scale = min(1.0, self.max_side / max(image_rgb_u8.shape[:2]))
        return self._run(image_rgb_u8, scale, self.min_face / scale, None)

    def detect_near(self, image_rgb_u8: np.ndarray, box: Sequence[float]) -> list[Detection]:
        # Only sizes 0.7x..1.45x of the previous face, at a scale where it is ~track_face_px: ~6x faster than detect.
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        return self._run(image_rgb_u8, min(1.0, self.track_face_px / side), side * 0.7, side * 1.45)

    def _run(self, image: np.ndarray, scale: float, min_side: float, max_side: float | None) -> list[Detection]:
        """Detect faces between min_side and max_side source pixels, working at `scale` (and the in-between scales)."""
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        found: list[Detection] = []
        for k in range(self.passes):
            found += self._pass(self._frontal, gray, scale * self.scale_factor ** (-k / self.passes), min_side,
                                max_side)
        if not found and self._profile is not None:  # the profile cascade only knows one side: run it mirrored too
            found = self._pass(self._profile, gray, scale, min_side, max_side)
            found += self._pass(self._profile, gray, scale, min_side, max_side, mirrored=True)
        return _merge_passes(found)

    def _pass(self, cascade, gray, scale, min_side, max_side, mirrored=False) -> list[Detection]:
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            work = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            scale = work.shape[1] / gray.shape[1]
        else:
            work, scale = gray, 1.0
        work = cv2.equalizeHist(np.ascontiguousarray(work[:, ::-1]) if mirrored else work)
        low = max(20, int(min_side * scale))
        high = math.ceil(max_side * scale) if max_side is not None else 0
        if min(work.shape) < low or (high and high < low):
            return []
        rects, counts = cascade.detectMultiScale2(work, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                                  minSize=(low, low), maxSize=(high, high))
        out = []
        for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(counts).reshape(-1)):
            x0 = work.shape[1] - x - w if mirrored else x
            out.append((x0 / scale, y / scale, (x0 + w) / scale, (y + h) / scale, float(n)))
        return out


def _merge_passes(dets: list[Detection]) -> list[Detection]:
    """Average the boxes that several passes found for the same face (IoU > 0.4); scores add up."""
    groups: list[list[Detection]] = []
    for d in sorted(dets, key=lambda d: -d[4]):
        for group in groups:
            if _iou(group[0], d) > 0.4:
                group.append(d)
                break
        else:
            groups.append([d])
    return [tuple(float(np.mean([d[k] for d in g])) for k in range(4)) + (float(sum(d[4] for d in g)),)
            for g in groups]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = _overlap(a, b)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"could not load the OpenCV Haar cascade {path}; reinstall opencv-python (4.x)")
    return cascade


DETECTORS: dict[str, Callable[[], FaceDetector]] = {"haar": HaarFaceDetector}


def get_detector(name: str = "haar") -> FaceDetector:
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name]()


@dataclass(frozen=True)
class FaceTrack:
    """One face followed through a clip.

    Attributes:
        boxes (`Tensor[F, 4]`, float32): face box per frame (x0, y0, x1, y1); filled in where `found` is False.
        found (`Tensor[F]`, bool): False where the detector missed and the box came from the missing-face policy.
    """

    boxes: torch.Tensor
    found: torch.Tensor

    @property
    def missing_frames(self) -> list[int]:
        return torch.nonzero(~self.found).flatten().tolist()


def track_face(frames: torch.Tensor, detector: FaceDetector | None = None, face_index: int = 0,
               index_mode: str = "largest", missing: str = "interpolate",
               progress: Callable[[int, int], None] | None = None) -> FaceTrack:
    """Detect and follow one face through `frames` ([F, H, W, 3], 0..1).

    The face is picked on the first frame showing more than `face_index` faces, sorted by `index_mode`; each other
    frame then takes the detection closest to the previous box (never a far-away face), so the track does not jump
    between people. Frames without a match are filled by the `missing` policy.
    """
    if index_mode not in FACE_INDEX_MODES:
        raise ValueError(f"face index mode {index_mode!r} is not one of {FACE_INDEX_MODES}")
    if missing not in MISSING_FACE_POLICIES:
        raise ValueError(f"missing-face policy {missing!r} is not one of {MISSING_FACE_POLICIES}")
    if face_index < 0:
        raise ValueError(f"face_index must be 0 or more, got {face_index}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be an IMAGE batch [frames, height, width, 3], got {tuple(frames.shape)}")
    detector = detector if detector is not None else get_detector()
    near = getattr(detector, "detect_near", None)
    n = frames.shape[0]
    boxes = np.zeros((n, 4))
    found = np.zeros(n, dtype=bool)

    # 1. Pick the face: first frame with enough faces.
    start, most = None, 0
    for i in range(n):
        dets = _drop_nested(detector.detect(_to_u8(frames[i])))
        most = max(most, len(dets))
        if progress is not None:
            progress(i + 1, n)
        if len(dets) > face_index:
            start = i
            boxes[i], found[i] = _sort_faces(dets, index_mode)[face_index][:4], True
            break
    if start is None:
        if most == 0:
            raise NoFaceError(f"no face was found in any of the {n} frames; use a clip where a face is clearly "
                              "visible (frontal, at least ~30 px tall) or plug in another detector")
        raise NoFaceError(f"face_index {face_index} asks for face #{face_index + 1} ({index_mode}), but no frame shows "
                          f"more than {most} face(s); set face_index to {most - 1} or less")

    # 2. Follow it forward, then backward from the start frame.
    done, total = start + 1, n + start
    for order in (range(start + 1, n), range(start - 1, -1, -1)):
        prev, gap = boxes[start], 0
        for i in order:
            image = _to_u8(frames[i])
            box = _closest(near(image, prev), prev, gap) if near is not None else None
            if box is None:
                box = _closest(detector.detect(image), prev, gap)
            if box is not None:
                boxes[i], found[i], prev, gap = box, True, box, 0
            else:
                gap += 1
            done += 1
            if progress is not None:
                progress(done, total)

    # 3. Fill the frames without a face.
    if not found.all():
        gaps = _ranges(np.flatnonzero(~found))
        if missing == "error":
            raise NoFaceError(f"{(~found).sum()} of {n} frames have no face (frames {gaps}); set the missing-face "
                              "policy to 'interpolate' or 'hold' to fill them from neighbouring frames, "
                              "or trim the clip")
        logger.warning("X-NeMo: no face in %d of %d frames (%s); filled by %r", (~found).sum(), n, gaps, missing)
        boxes = _fill(boxes, found, missing)
    return FaceTrack(boxes=torch.from_numpy(boxes).float(), found=torch.from_numpy(found))


def as_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """IMAGE [F, H, W, C] with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) -> [F, H, W, 3]; alpha is dropped."""
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, channels] with 1 to 4 channels, got "
                         f"shape {tuple(images.shape)}: connect an image or video frames (Load Image, Load Video)")
    if images.shape[-1] <= 2:
        return images[..., :1].expand(*images.shape[:-1], 3)
    return images[..., :3]


def _to_u8(frame: torch.Tensor) -> np.ndarray:
    # numpy, not torch: per-frame work this small runs slower on torch's thread pool when cores are busy
    return (np.clip(frame.detach().cpu().float().numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)


def _sort_faces(dets: list[Detection], mode: str) -> list[Detection]:
    keys = {
        "largest": lambda d: -(d[2] - d[0]) * (d[3] - d[1]),
        "left_to_right": lambda d: d[0] + d[2],
        "right_to_left": lambda d: -(d[0] + d[2]),
        "top_to_bottom": lambda d: d[1] + d[3],
        "most_confident": lambda d: -d[4],
    }
    return sorted(dets, key=keys[mode])


def _drop_nested(dets: list[Detection]) -> list[Detection]:
    """Drop a detection lying mostly (>60 %) inside a larger one: one face, two boxes."""
    keep: list[Detection] = []
    for d in sorted(dets, key=lambda d: -(d[2] - d[0]) * (d[3] - d[1])):
        area = (d[2] - d[0]) * (d[3] - d[1])
        if all(_overlap(d, k) < 0.6 * area for k in keep):
            keep.append(d)
    return keep


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _closest(dets: list[Detection], prev: np.ndarray, gap: int) -> np.ndarray | None:
    """The detection nearest the previous box, if near enough (the gate widens while the face stays lost)."""
    side = max(prev[2] - prev[0], prev[3] - prev[1])
    centre = np.array([prev[0] + prev[2], prev[1] + prev[3]]) / 2
    best, best_cost = None, math.inf
    for d in dets:
        dist = np.hypot(*(np.array([d[0] + d[2], d[1] + d[3]]) / 2 - centre)) / side
        ratio = max(d[2] - d[0], d[3] - d[1]) / side
        if dist > 0.5 + 0.25 * gap or not 0.5 <= ratio <= 2.0:
            continue
        cost = dist + abs(math.log(ratio))
        if cost < best_cost:
            best, best_cost = np.array(d[:4], dtype=np.float64), cost
    return best


def _fill(boxes: np.ndarray, found: np.ndarray, policy: str) -> np.ndarray:
    known = np.flatnonzero(found)
    every = np.arange(len(boxes))
    if policy == "interpolate":  # linear between found frames; np.interp holds the end values
        return np.stack([np.interp(every, known, boxes[known, k]) for k in range(4)], axis=1)
    source = np.maximum.accumulate(np.where(found, every, -1))  # last found frame at or before each frame
    source[source < 0] = known[0]
    return boxes[source]


def _ranges(indices: np.ndarray, limit: int = 8) -> str:
    runs: list[list[int]] = []
    for i in indices.tolist():
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs) - limit} more runs)" if len(runs) > limit else "")


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


@dataclass(frozen=True)
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


def driving_crops(frames: torch.Tensor, track: FaceTrack, scale: float = 1.1, sigma: float = 5.0,
                  size: int = 224) -> DrivingCrops:
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


def reference_motion_crop(image: torch.Tensor, face_box: Sequence[float], scale: float = 1.1,
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


def draw_track(frames: torch.Tensor, track: FaceTrack, crop_boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Preview: face box in green (red where filled in, with a red frame border), crop box in cyan."""
    out = np.empty(tuple(frames.shape[:3]) + (3,), dtype=np.uint8)
    thick = max(1, round(max(frames.shape[1:3]) / 256))
    for i in range(frames.shape[0]):
        image = np.ascontiguousarray(_to_u8(frames[i])[..., :3])
        hit = bool(track.found[i])
        if crop_boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in crop_boxes[i].tolist())
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 255), thick)
        x0, y0, x1, y1 = (int(round(v)) for v in track.boxes[i].tolist())
        cv2.rectangle(image, (x0, y0), (x1, y1), (0, 230, 0) if hit else (255, 40, 40), thick)
        if not hit:
            cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), (255, 40, 40), 2 * thick)
            cv2.putText(image, "no face", (4 * thick, 14 * thick), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick,
                        (255, 40, 40), thick)
        out[i] = image
    return torch.from_numpy(out).float() / 255
