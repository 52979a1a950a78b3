"""X-NeMo Encode Motion: driving video frames -> per-frame motion tokens (XNEMO_MOTION) and a face-track preview."""

from __future__ import annotations

import comfy.utils
import torch
from comfy_api.latest import io

from ..xnemo_core.pipeline import FaceOptions, encode_motion
from ..xnemo_core.pure import core_faces, face_crop, face_track
from ..xnemo_core.pure.constants import DEFAULT_CROP_SCALE, DEFAULT_SMOOTHING_SIGMA
from .checks import check_named
from .types import CATEGORY, SOCKET_ONLY, CoreBoundingBox, CoreFaceLandmarks, XNeMo, XNeMoMotion

CORE_TRACK_NOTE = (
    "Replaces the detector on the driving frames (face_index/face_order and missing_face still apply). Core's "
    "boxes are the extent of its face-mesh landmarks, not BlazeFace's box, so the crops differ from the official."
)


def face_inputs() -> list:
    """Face options shared by Encode Motion and Reference Condition."""
    return [
        io.Combo.Input(
            "detector",
            options=list(face_track.DETECTORS),
            default=face_track.DEFAULT_DETECTOR,
            tooltip="Face detector. blazeface: MediaPipe's BlazeFace short range, the detector the official "
            "X-NeMo crops are cut around (bundled, runs on the GPU when there is one). haar: "
            "OpenCV's cascade; its boxes sit higher and larger, so crops differ from the official.",
        ),
        io.Int.Input(
            "face_index",
            default=0,
            min=0,
            max=16,
            tooltip="Which face to follow when several are visible (0 = first in face_order).",
        ),
        io.Combo.Input(
            "face_order",
            options=list(face_track.FACE_INDEX_MODES),
            default="largest",
            tooltip="How faces are ordered for face_index: largest first, left to right, ...",
        ),
    ]


class XNeMoEncodeMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XNeMoEncodeMotion",
            display_name="X-NeMo Encode Motion",
            category=CATEGORY,
            description="Track the face through the driving frames, crop it the way X-NeMo was trained and encode each "
            "frame into 32 motion tokens. Works with any frame size (core Load Video / Get Video Components "
            "or VideoHelperSuite IMAGE batches).",
            inputs=[
                XNeMo.Input("xnemo", tooltip="From Load X-NeMo."),
                io.Image.Input("images", tooltip="Driving video frames (IMAGE batch), any size or aspect."),
                *face_inputs(),
                io.Float.Input(
                    "crop_scale",
                    default=DEFAULT_CROP_SCALE,
                    min=1.0,
                    max=3.0,
                    step=0.05,
                    tooltip=f"Driving crop side relative to the face box of the first frame "
                    f"(official {DEFAULT_CROP_SCALE}); Reference Condition cuts the reference's "
                    "own motion crop with the same scale.",
                ),
                io.Float.Input(
                    "smoothing_sigma",
                    default=DEFAULT_SMOOTHING_SIGMA,
                    min=0.0,
                    max=50.0,
                    step=0.5,
                    tooltip=f"Temporal smoothing of the crop centre in frames (official "
                    f"{DEFAULT_SMOOTHING_SIGMA:g}). Raise for shaky detections, lower "
                    "for fast head motion; 0 disables.",
                ),
                io.Combo.Input(
                    "missing_face",
                    options=list(face_track.MISSING_FACE_POLICIES),
                    default="interpolate",
                    tooltip="Frames where no face is found: interpolate between neighbours, hold the last "
                    "box, or stop with an error listing the frames.",
                ),
                io.Combo.Input(
                    "f_rts_mode",
                    options=list(face_crop.F_RTS_MODES),
                    default="official",
                    tooltip="Head position/scale signal. official: constant [0,0,1] as the released code; "
                    "relative: head translation and zoom relative to the reference face (paper), "
                    "needs the reference image.",
                ),
                io.Float.Input(
                    "fps",
                    default=0.0,
                    min=0.0,
                    max=240.0,
                    step=0.001,
                    optional=True,
                    tooltip="Frame rate of the driving video (from Get Video Components); carried along so "
                    "the output keeps it. 0 = unknown.",
                ),
                io.Image.Input(
                    "reference", optional=True, tooltip="The reference portrait; needed only for f_rts_mode 'relative'."
                ),
                CoreFaceLandmarks.Input(
                    "face_landmarks",
                    optional=True,
                    extra_dict=SOCKET_ONLY,
                    tooltip="Optional face track from core's Detect Face Landmarks (MediaPipe), ComfyUI 0.30+, run on "
                    "the same frames. " + CORE_TRACK_NOTE,
                ),
                CoreBoundingBox.Input(
                    "face_boxes",
                    optional=True,
                    extra_dict=SOCKET_ONLY,
                    tooltip="Optional face boxes per frame (BOUNDING_BOX, e.g. the bboxes output of core's Detect "
                    "Face Landmarks (MediaPipe)), pixels of the same frames. " + CORE_TRACK_NOTE,
                ),
            ],
            outputs=[
                XNeMoMotion.Output(
                    display_name="motion",
                    tooltip="Per-frame motion tokens (with face features, boxes "
                    "and fps) for Reference Condition and Interpolate Motion.",
                ),
                io.Image.Output(
                    display_name="track_preview",
                    tooltip="Driving frames with the face box (green; red where filled in) and the crop box (cyan).",
                ),
            ],
            is_experimental=True,
        )

    @classmethod
    def validate_inputs(
        cls,
        detector: str | None = None,
        face_order: str | None = None,
        missing_face: str | None = None,
        f_rts_mode: str | None = None,
    ) -> bool | str:
        # Dropdowns only: ComfyUI's own min/max checks stay on for the numbers (see nodes/checks.py).
        return check_named(
            cls, detector=detector, face_order=face_order, missing_face=missing_face, f_rts_mode=f_rts_mode
        )

    @classmethod
    def execute(
        cls,
        xnemo,
        images: torch.Tensor,
        detector: str,
        face_index: int,
        face_order: str,
        crop_scale: float,
        smoothing_sigma: float,
        missing_face: str,
        f_rts_mode: str,
        fps: float = 0.0,
        reference: torch.Tensor | None = None,
        face_landmarks: dict | None = None,
        face_boxes: list | None = None,
    ) -> io.NodeOutput:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(
                f"images must be a batch of at least one frame, got shape {tuple(images.shape)}: "
                "connect driving video frames (Load Video + Get Video Components, or Load Image)"
            )
        options = FaceOptions(
            detector=detector,
            crop_scale=crop_scale,
            smoothing_sigma=smoothing_sigma,
            face_index=face_index,
            face_order=face_order,
            missing_face=missing_face,
            f_rts_mode=f_rts_mode,
        )
        given = core_faces.given_track(face_landmarks, face_boxes, images.shape[1], images.shape[2])
        bar = comfy.utils.ProgressBar(2 * images.shape[0])
        motion, preview = encode_motion(
            xnemo,
            images,
            options,
            fps or None,
            reference,
            progress=lambda done, total: bar.update_absolute(done, total),
            given_faces=given,
        )
        return io.NodeOutput(motion, preview)


NODES = [XNeMoEncodeMotion]
