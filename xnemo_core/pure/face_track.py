"""Face detection and tracking over a clip: detectors, face choice (face_index), missing-face policies, the preview.

Two detectors: MediaPipe's BlazeFace short-range model (blazeface.py), the one the official X-NeMo crops were made
with and the default, and OpenCV's Haar cascades. Pure room: numpy, torch, Pillow, and OpenCV for Haar only: the pack
requires no OpenCV distribution (opencv-python, -headless and -contrib all provide `cv2`, and two of them installed
side by side break it), so `cv2` is imported when a Haar detector is built and any 4.x build works. Boxes are
(x0, y0, x1, y1) in source pixels, frames are ComfyUI IMAGE tensors ([F, H, W, 3] float in 0..1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import blazeface
from .errors import NoFaceError, XNeMoError

logger = logging.getLogger("xnemo")

Detection = tuple[float, float, float, float, float]  # x0, y0, x1, y1, score (higher is better)

FACE_INDEX_MODES = ("largest", "left_to_right", "right_to_left", "top_to_bottom", "most_confident")
MISSING_FACE_POLICIES = ("interpolate", "hold", "error")


class FaceDetector(Protocol):
    """Anything with `detect(image_rgb_u8[H, W, 3]) -> [(x0, y0, x1, y1, score), ...]`.

    A detector may also offer `detect_batch(frames, progress)`, detections of a whole IMAGE batch at once, which
    `track_face` then uses instead of `detect`; `detect_small(image)`, a slower search for faces too small for
    `detect`, used until the face to follow is found; and `detect_near(image, box)`, a closer search for a face about
    the size and place of `box`, used where the tracked face is not among the detections.
    """

    def detect(self, image_rgb_u8: np.ndarray) -> list[Detection]: ...


def opencv():
    """The `cv2` module of whichever OpenCV 4.x build is installed; a clear message when there is none."""
    try:
        import cv2
    except ImportError as err:
        raise XNeMoError(
            f"detector 'haar' needs OpenCV, which ComfyUI's Python cannot import ({err}). Use detector 'blazeface' "
            "(the default, no OpenCV needed), or install one OpenCV 4.x build into ComfyUI's Python, e.g. "
            "`pip install opencv-python-headless`; if an OpenCV package (opencv-python, opencv-contrib-python, "
            "...) is already listed by `pip list`, repair that one instead of adding a second"
        ) from None
    major = str(getattr(cv2, "__version__", "0")).split(".")[0]
    if major != "4" or not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise XNeMoError(
            f"detector 'haar' needs an OpenCV 4.x build with its Haar cascade files (cv2.data); the "
            f"installed cv2 is {getattr(cv2, '__version__', 'of unknown version')} without them. Use "
            "detector 'blazeface', or install opencv-python-headless 4.x (replacing that cv2)"
        )
    return cv2


class HaarFaceDetector:
    """OpenCV's Haar cascades (any OpenCV 4.x build): frontal, then both profiles when the frontal finds nothing.

    Replaces the official MediaPipe BlazeFace so the pack needs no mediapipe. Detection runs on a downscaled, histogram
    equalised grayscale image. A cascade only tries sizes a `scale_factor` step apart, so one pass puts a box's size
    off by up to ~9 %; `passes` runs at evenly spaced in-between scales and averages matching boxes (2 passes: ~4 %).
    The score is the cascade's neighbour count.
    """

    def __init__(
        self,
        max_side: int = 512,
        min_face: int = 24,
        min_neighbors: int = 5,
        profile: bool = True,
        track_face_px: int = 96,
        scale_factor: float = 1.1,
        passes: int = 2,
    ) -> None:
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
        cv2 = opencv()
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        found: list[Detection] = []
        for k in range(self.passes):
            found += self._pass(
                self._frontal, gray, scale * self.scale_factor ** (-k / self.passes), min_side, max_side
            )
        if not found and self._profile is not None:  # the profile cascade only knows one side: run it mirrored too
            found = self._pass(self._profile, gray, scale, min_side, max_side)
            found += self._pass(self._profile, gray, scale, min_side, max_side, mirrored=True)
        return _merge_passes(found)

    def _pass(self, cascade, gray, scale, min_side, max_side, mirrored=False) -> list[Detection]:
        cv2 = opencv()
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
        rects, counts = cascade.detectMultiScale2(
            work,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(low, low),
            maxSize=(high, high),
        )
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
    return [tuple(float(np.mean([d[k] for d in g])) for k in range(4)) + (float(sum(d[4] for d in g)),) for g in groups]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = _overlap(a, b)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _load_cascade(name: str):
    cv2 = opencv()
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise XNeMoError(
            f"could not load the OpenCV Haar cascade {path}; reinstall the OpenCV package that provides "
            "cv2 (4.x), or use detector 'blazeface'"
        )
    return cascade


class BlazeFaceFaceDetector:
    """MediaPipe's BlazeFace short-range model, the detector the official X-NeMo crops were cut with (blazeface.py).

    Whole frames are detected exactly as MediaPipe's FaceDetector sees them (the frame letterboxed into 128x128),
    batched on `device` (`detect_batch`). The short-range model wants faces that fill a good part of its input, so
    for faces that come out too small that way (landscape frames, small faces) two fallbacks look closer:
    - until the face to follow is found, a frame without it is searched again in overlapping squares (frame-high
      squares along a landscape frame, then half-size squares: `detect_small`);
    - while tracking, a frame whose detections hold no match for the tracked face is searched in a square three faces
      wide around it (`detect_near`).
    Scores are BlazeFace's probabilities (0.5 to 1).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        reserve: Callable[[int], None] | None = None,
    ) -> None:
        self._blaze = blazeface.get_detector(model_path or blazeface.BUNDLED_MODEL, device)
        self.batch_size = batch_size
        self.reserve = reserve  # called with the device bytes of each batch before it runs (ComfyUI's memory manager)

    def detect(self, image_rgb_u8: np.ndarray) -> list[Detection]:
        return self.detect_batch(torch.from_numpy(np.ascontiguousarray(image_rgb_u8))[None])[0]

    def detect_batch(
        self, frames: torch.Tensor, progress: Callable[[int, int], None] | None = None
    ) -> list[list[Detection]]:
        """Whole-frame detections of every frame of an IMAGE batch ([F, H, W, 3], 0..1 float or uint8)."""
        n = frames.shape[0]
        out: list[list[Detection]] = []
        for start in range(0, n, self.batch_size):
            found = self._blaze.detect_frames(frames[start : start + self.batch_size], reserve=self.reserve)
            out += [[_as_detection(d) for d in faces] for faces in found]
            if progress is not None:
                progress(min(start + self.batch_size, n), n)
        return out

    def detect_small(self, image_rgb_u8: np.ndarray) -> list[Detection]:
        """Faces too small for the whole-frame pass: the frame searched in overlapping squares, one batch."""
        tiles = _tiles(image_rgb_u8.shape[1], image_rgb_u8.shape[0])
        if not tiles:
            return []
        frame = torch.from_numpy(np.ascontiguousarray(image_rgb_u8))[None].expand(len(tiles), -1, -1, -1)
        found = self._blaze.detect_frames(frame, tiles, self.reserve)
        return _suppress([_as_detection(d) for faces in found for d in faces])

    def detect_near(self, image_rgb_u8: np.ndarray, box: Sequence[float]) -> list[Detection]:
        """The square three faces wide about `box`, letterboxed into the model alone (a small face comes out large)."""
        side = 3 * max(box[2] - box[0], box[3] - box[1], 8.0)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        region = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        frame = torch.from_numpy(np.ascontiguousarray(image_rgb_u8))[None]
        return [_as_detection(d) for d in self._blaze.detect_frames(frame, [region], self.reserve)[0]]


def _as_detection(face: blazeface.FaceDetection) -> Detection:
    return tuple(float(v) for v in face.box) + (float(face.score),)


def _tiles(width: int, height: int) -> list[tuple[float, float, float, float]]:
    """Overlapping squares for frames where the whole-frame pass saw no face: frame-high (or -wide) squares along a
    non-square frame, then squares of half that side, half overlapping; none smaller than 64 px."""
    out = []
    side = min(width, height)
    for s in ([side] if width != height else []) + ([side / 2] if side / 2 >= 64 else []):
        xs = np.linspace(0, width - s, max(1, math.ceil(2 * (width - s) / s) + 1)) if width > s else [0.0]
        ys = np.linspace(0, height - s, max(1, math.ceil(2 * (height - s) / s) + 1)) if height > s else [0.0]
        out += [(float(x), float(y), float(x + s), float(y + s)) for y in ys for x in xs]
    return out


def _suppress(dets: list[Detection], iou: float = 0.3) -> list[Detection]:
    """Best-scoring first; drop a detection overlapping a kept one (tiles overlap, so faces are seen twice)."""
    keep: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d[4]):
        if all(_iou(d, k) <= iou for k in keep):
            keep.append(d)
    return keep


DETECTORS: dict[str, Callable[..., FaceDetector]] = {"blazeface": BlazeFaceFaceDetector, "haar": HaarFaceDetector}
DEFAULT_DETECTOR = "blazeface"


def get_detector(
    name: str = DEFAULT_DETECTOR,
    device: torch.device | str = "cpu",
    model_path: str | Path | None = None,
    reserve: Callable[[int], None] | None = None,
) -> FaceDetector:
    """A detector by name. BlazeFace runs on `device`, reads `model_path` (default: the file bundled in the pack's
    models/ folder) and calls `reserve(bytes)` before each batch; Haar runs on the CPU."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    if name == "blazeface":
        return BlazeFaceFaceDetector(model_path, device, reserve=reserve)
    return DETECTORS[name]()


@dataclass(frozen=True, kw_only=True)
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


def track_face(
    frames: torch.Tensor,
    detector: FaceDetector | None = None,
    face_index: int = 0,
    index_mode: str = "largest",
    missing: str = "interpolate",
    progress: Callable[[int, int], None] | None = None,
) -> FaceTrack:
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
    small = getattr(detector, "detect_small", None)
    batch = getattr(detector, "detect_batch", None)
    n = frames.shape[0]
    boxes = np.zeros((n, 4))
    found = np.zeros(n, dtype=bool)
    # A batched detector sees every frame at once (that is its progress); then tracking only picks among them.
    every = batch(frames, progress) if batch is not None else None

    def detections(i: int) -> list[Detection]:
        return every[i] if every is not None else detector.detect(_to_u8(frames[i]))

    # 1. Pick the face: first frame with enough faces.
    start, most = None, 0
    for i in range(n):
        dets = _drop_nested(detections(i))
        if len(dets) <= face_index and small is not None:
            dets = _drop_nested(_suppress(dets + small(_to_u8(frames[i]))))
        most = max(most, len(dets))
        if progress is not None and every is None:
            progress(i + 1, n)
        if len(dets) > face_index:
            start = i
            boxes[i], found[i] = _sort_faces(dets, index_mode)[face_index][:4], True
            break
    if start is None:
        if most == 0:
            raise NoFaceError(
                f"no face was found in any of the {n} frames; use a clip where a face is clearly "
                "visible (frontal, at least ~30 px tall) or plug in another detector"
            )
        raise NoFaceError(
            f"face_index {face_index} asks for face #{face_index + 1} ({index_mode}), but no frame shows "
            f"more than {most} face(s); set face_index to {most - 1} or less"
        )

    # 2. Follow it forward, then backward from the start frame. Haar looks near the previous face first (cheaper),
    # a batched detector only where its whole-frame detections hold no match.
    done, total = start + 1, n + start
    for order in (range(start + 1, n), range(start - 1, -1, -1)):
        prev, gap = boxes[start], 0
        for i in order:
            box = None
            if every is None:
                image = _to_u8(frames[i])
                box = _closest(near(image, prev), prev, gap) if near is not None else None
                if box is None:
                    box = _closest(detector.detect(image), prev, gap)
            else:
                box = _closest(every[i], prev, gap)
                if box is None and near is not None:
                    box = _closest(near(_to_u8(frames[i]), prev), prev, gap)
            if box is not None:
                boxes[i], found[i], prev, gap = box, True, box, 0
            else:
                gap += 1
            done += 1
            if progress is not None and every is None:
                progress(done, total)

    # 3. Fill the frames without a face.
    if not found.all():
        gaps = _ranges(np.flatnonzero(~found))
        if missing == "error":
            raise NoFaceError(
                f"{(~found).sum()} of {n} frames have no face (frames {gaps}); set the missing-face "
                "policy to 'interpolate' or 'hold' to fill them from neighbouring frames, "
                "or trim the clip"
            )
        logger.warning("X-NeMo: no face in %d of %d frames (%s); filled by %r", (~found).sum(), n, gaps, missing)
        boxes = _fill(boxes, found, missing)
    return FaceTrack(boxes=torch.from_numpy(boxes).float(), found=torch.from_numpy(found))


def as_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """IMAGE [F, H, W, C] with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) -> [F, H, W, 3]; alpha is dropped."""
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name} must be an IMAGE batch [frames, height, width, channels] with 1 to 4 channels, got "
            f"shape {tuple(images.shape)}: connect an image or video frames (Load Image, Load Video)"
        )
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


def _rectangle(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, color, thick: int) -> None:
    """Outline of the box with corners (x0, y0) and (x1, y1), lines `thick` px wide centred on the edges; clipped."""
    h, w = image.shape[:2]
    lo, hi = thick // 2, thick - thick // 2
    for ya, yb, xa, xb in (
        (y0 - lo, y0 + hi, x0 - lo, x1 + hi),
        (y1 - lo, y1 + hi, x0 - lo, x1 + hi),
        (y0 - lo, y1 + hi, x0 - lo, x0 + hi),
        (y0 - lo, y1 + hi, x1 - lo, x1 + hi),
    ):
        image[max(ya, 0) : min(yb, h), max(xa, 0) : min(xb, w)] = color


def draw_track(frames: torch.Tensor, track: FaceTrack, crop_boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Preview: face box in green (red where filled in, with a red frame border), crop box in cyan."""
    out = np.empty(tuple(frames.shape[:3]) + (3,), dtype=np.uint8)
    thick = max(1, round(max(frames.shape[1:3]) / 256))
    font = ImageFont.load_default(size=12 * thick)
    for i in range(frames.shape[0]):
        image = np.ascontiguousarray(_to_u8(frames[i])[..., :3])
        hit = bool(track.found[i])
        if crop_boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in crop_boxes[i].tolist())
            _rectangle(image, x0, y0, x1 - 1, y1 - 1, (0, 200, 255), thick)
        x0, y0, x1, y1 = (int(round(v)) for v in track.boxes[i].tolist())
        _rectangle(image, x0, y0, x1, y1, (0, 230, 0) if hit else (255, 40, 40), thick)
        if not hit:
            _rectangle(image, 0, 0, image.shape[1] - 1, image.shape[0] - 1, (255, 40, 40), 2 * thick)
            canvas = Image.fromarray(image)
            ImageDraw.Draw(canvas).text((4 * thick, 3 * thick), "no face", fill=(255, 40, 40), font=font)
            image = np.asarray(canvas)
        out[i] = image
    return torch.from_numpy(out).float() / 255
