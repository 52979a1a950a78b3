"""Face tracks from ComfyUI's own face nodes (core 0.30+: Detect Face Landmarks (MediaPipe)) as per-frame detections.

Core's payloads are plain Python (no core import needed), read here as `face_track` detections so `track_face` picks
and follows one face among them exactly as it does among its own detector's:
- FACE_LANDMARKS: `{"frames": [[face, ...] per frame], "image_size": (H, W), ...}`, each face a dict whose
  `bbox_xyxy` (x0, y0, x1, y1, pixels of the analysed picture) is the extent of its 478 FaceMesh landmarks, and
  `score` the BlazeFace score;
- BOUNDING_BOX (as core's face and object detectors output it): one list per frame of
  `{"x", "y", "width", "height", ...}` dicts in pixels (a frame with one box may be the dict itself).
Why this changes the crops: the official crops are cut around MediaPipe's BlazeFace *detector* box; core's boxes are
the landmark extent (forehead to chin, ear to ear), a larger box placed differently, so crop size and centre move.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import XNeMoError
from .face_track import Detection


class FaceTrackInputError(XNeMoError):
    """A face track from another node that does not fit the frames (count, size, layout)."""


class GivenDetections:
    """A `face_track.FaceDetector` whose detections were made elsewhere: one list per frame, handed out as a batch.

    With no `detect_small` / `detect_near`, tracking adds no detection of its own: frames where the given track has
    no face go to the missing-face policy."""

    def __init__(self, per_frame: Sequence[Sequence[Detection]], source: str) -> None:
        self.per_frame = [list(faces) for faces in per_frame]
        self.source = source

    def detect(self, image_rgb_u8: np.ndarray) -> list[Detection]:
        raise FaceTrackInputError(f"the {self.source} face track only holds detections of whole clips")

    def detect_batch(
        self, frames: torch.Tensor, progress: Callable[[int, int], None] | None = None
    ) -> list[list[Detection]]:
        n = frames.shape[0]
        if len(self.per_frame) != n:
            raise FaceTrackInputError(
                f"the {self.source} face track has {len(self.per_frame)} frames but images has {n}: detect faces "
                "on the same frames you connect to images (same video, same trim and frame step)"
            )
        if progress is not None:
            progress(n, n)
        return self.per_frame


def from_face_landmarks(payload: Mapping, height: int, width: int) -> GivenDetections:
    """FACE_LANDMARKS -> detections (landmark-extent boxes, BlazeFace scores); refuses another picture size."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("frames"), Sequence):
        raise FaceTrackInputError(
            f"face_landmarks is not a FACE_LANDMARKS track (a dict with 'frames'), got {type(payload).__name__}: "
            "connect the face_landmarks output of Detect Face Landmarks (MediaPipe)"
        )
    size = payload.get("image_size")
    if size is not None and tuple(int(v) for v in size) != (height, width):
        raise FaceTrackInputError(
            f"face_landmarks were detected on {size[1]}x{size[0]} pictures but images are {width}x{height}: detect "
            "faces on the frames you connect to images (resize after Encode Motion, not before detection)"
        )
    frames = []
    for i, faces in enumerate(payload["frames"]):
        found = []
        for face in faces or []:
            box = face.get("bbox_xyxy") if isinstance(face, Mapping) else None
            if box is None or len(box) != 4:
                raise FaceTrackInputError(f"face_landmarks frame {i}: a face without a 4-value bbox_xyxy")
            found.append(tuple(float(v) for v in box) + (float(face.get("score", 1.0)),))
        frames.append(found)
    return GivenDetections(frames, "face_landmarks")


def from_bounding_boxes(payload: Sequence) -> GivenDetections:
    """BOUNDING_BOX per frame (x, y, width, height in pixels) -> detections; missing scores count as 1."""
    if isinstance(payload, Mapping) or not isinstance(payload, Sequence):
        raise FaceTrackInputError(
            "face_boxes must hold one list of boxes per frame (the bboxes output of Detect Face Landmarks "
            f"(MediaPipe) or another per-frame detector), got {type(payload).__name__}"
        )
    frames = []
    for i, boxes in enumerate(payload):
        boxes = [boxes] if isinstance(boxes, Mapping) else list(boxes or [])
        found = []
        for box in boxes:
            try:
                x, y, w, h = (float(box[k]) for k in ("x", "y", "width", "height"))
            except (KeyError, TypeError, ValueError):
                raise FaceTrackInputError(
                    f"face_boxes frame {i}: {box!r} is not a box with x, y, width and height in pixels"
                ) from None
            if w <= 0 or h <= 0:
                continue  # an empty box is no face
            found.append((x, y, x + w, y + h, float(box.get("score", 1.0))))
        frames.append(found)
    return GivenDetections(frames, "face_boxes")


def given_track(
    face_landmarks: Mapping | None, face_boxes: Sequence | None, height: int, width: int
) -> GivenDetections | None:
    """Encode Motion's two optional core-track inputs -> detections, or None when neither is connected."""
    if face_landmarks is not None and face_boxes is not None:
        raise FaceTrackInputError(
            "connect face_landmarks or face_boxes, not both: they are two forms of one face track"
        )
    if face_landmarks is not None:
        return from_face_landmarks(face_landmarks, height, width)
    if face_boxes is not None:
        return from_bounding_boxes(face_boxes)
    return None
