"""From pictures to X-NeMo inputs: driving motion (Encode Motion) and the reference conditioning (Reference Condition).

Everything expensive happens here once per clip: face tracking, the motion encoder over every driving frame, the
ReferenceNet bank, the CLIP image embedding and the reference latent. Sampling then only reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .adapters import clip
from .adapters import vae as vae_adapter
from .adapters.face_model import face_detector
from .adapters.model import XNeMoBundle
from .adapters.reference_bank import compute_reference_bank
from .adapters.sampling import blurred_reference
from .adapters.unet_patch import xnemo_conditioning
from .pure import face_crop, face_track, motion_ops
from .pure.constants import DEFAULT_CROP_SCALE, DEFAULT_SMOOTHING_SIGMA, LATENT_SCALE, MOTION_INPUT_SIZE
from .pure.errors import IncompatibleModelError, NoFaceError
from .pure.payloads import CropInfo, MotionSequence

Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class FaceOptions:
    detector: str = face_track.DEFAULT_DETECTOR
    crop_scale: float = DEFAULT_CROP_SCALE
    smoothing_sigma: float = DEFAULT_SMOOTHING_SIGMA
    face_index: int = 0
    face_order: str = "largest"
    missing_face: str = "interpolate"
    f_rts_mode: str = "official"


def reference_face_box(
    image: torch.Tensor, detector: str = face_track.DEFAULT_DETECTOR, face_index: int = 0, face_order: str = "largest"
) -> tuple[float, float, float, float]:
    """Face box of a single reference picture [1, H, W, 3]; NoFaceError says what to do when there is none."""
    image = face_track.as_rgb(image[:1], "image")
    try:
        track = face_track.track_face(image, face_detector(detector), face_index, face_order, missing="error")
    except NoFaceError as e:
        if str(e).startswith("face_index"):
            raise NoFaceError(f"reference image: {e}") from None
        raise NoFaceError(
            "no face was found in the reference image: use a portrait where the face is clearly visible, "
            "frontal and at least ~30 px tall"
        ) from None
    return tuple(float(v) for v in track.boxes[0])


def encode_motion(
    xnemo: XNeMoBundle,
    frames: torch.Tensor,
    options: FaceOptions,
    fps: float | None = None,
    reference: torch.Tensor | None = None,
    progress: Progress | None = None,
    given_faces: face_track.FaceDetector | None = None,
):
    """Driving IMAGE batch [F, H, W, 3] -> (MotionSequence, track preview IMAGE).

    `given_faces`: detections made elsewhere (a core face track, `pure/core_faces`) used instead of the detector;
    face choice, following and the missing-face policy stay the same."""
    frames = face_track.as_rgb(frames)
    n = frames.shape[0]
    total = 2 * n

    def tracked(done, _):
        if progress is not None:
            progress(min(done, n), total)

    detector = given_faces if given_faces is not None else face_detector(options.detector)
    track = face_track.track_face(
        frames, detector, options.face_index, options.face_order, options.missing_face, tracked
    )
    crops = face_crop.driving_crops(frames, track, options.crop_scale, options.smoothing_sigma, MOTION_INPUT_SIZE)
    ref_box = None
    if options.f_rts_mode == "relative":
        if reference is None:
            raise IncompatibleModelError(
                "f_rts_mode 'relative' measures head motion against the reference face: "
                "connect the reference image to Encode Motion, or use 'official'"
            )
        ref_box = reference_face_box(reference, options.detector, options.face_index, options.face_order)
    f_rts = face_crop.compute_f_rts(track.boxes, ref_box, options.f_rts_mode)
    features = xnemo.encode_faces(
        crops.crops, progress=None if progress is None else (lambda done, _: progress(n + done, total))
    )
    motion = MotionSequence(
        tokens=xnemo.fuse(features, f_rts),
        face_features=features,
        f_rts=f_rts,
        fusion=xnemo.fusion_head(),
        boxes=track.boxes,
        face_found=track.found,
        fps=float(fps) if fps else None,
        crop_scale=float(options.crop_scale),
    )
    return motion, face_track.draw_track(frames, track, crops.crop_boxes)


@dataclass(frozen=True, kw_only=True)
class ReferenceResult:
    positive: list
    negative: list
    latent: torch.Tensor  # [F, 4, h, w] unscaled LATENT samples: the blurred reference start
    crop: CropInfo
    crop_image: torch.Tensor  # [1, height, width, 3]


def reference_condition(
    xnemo: XNeMoBundle,
    image: torch.Tensor,
    clip_vision,
    vae,
    motion: MotionSequence,
    width: int,
    height: int,
    options: FaceOptions = FaceOptions(),
    progress: Progress | None = None,
    motion_strength: float = 1.0,
    head_strength: float = 1.0,
    crop_mode: str = face_crop.DEFAULT_REFERENCE_CROP_MODE,
) -> ReferenceResult:
    """Crop the reference the official way, then CLIP embedding, VAE latent, ReferenceNet bank and the CFG pair.

    crop_mode (`face_crop.REFERENCE_CROP_MODES`) picks how a non-square width x height is cut: the official square
    crop resized to it, or a box widened to its aspect (`face_crop.reference_crop`).
    motion_strength / head_strength below 1 move the driving motion towards the portrait's own (its face feature,
    and the head position/zoom f_rts) before it goes into the positive branch: `motion_ops.toward_own_motion`.
    """
    clip.check_clip_vision(clip_vision)  # wrong encoders are refused before any work
    vae_adapter.vae_kind(vae)
    image = face_track.as_rgb(image[:1], "image")
    box = reference_face_box(image, options.detector, options.face_index, options.face_order)
    crop_image, crop = face_crop.reference_crop(image[0], box, height, width, mode=crop_mode)
    crop_image = crop_image.unsqueeze(0)
    steps = 4
    _tick(progress, 1, steps)

    # Negative motion: the reference face's own expression, box parameter [0, 0, 1] (official uncond branch), cut
    # with the driving crop's scale so the two motions agree.
    scale = motion.crop_scale if motion.crop_scale is not None else options.crop_scale
    motion_crop = face_crop.reference_motion_crop(image[0], box, scale, MOTION_INPUT_SIZE)
    own_features, own_f_rts = xnemo.encode_faces(motion_crop), torch.tensor([[0.0, 0.0, 1.0]])
    reference_tokens = xnemo.fuse(own_features, own_f_rts)
    if (motion_strength, head_strength) != (1.0, 1.0):
        own = MotionSequence(
            tokens=reference_tokens, face_features=own_features, f_rts=own_f_rts, fusion=xnemo.fusion_head()
        )
        motion = motion_ops.toward_own_motion(motion, own, motion_strength, head_strength)
    _tick(progress, 2, steps)

    clip_embed, scaled = encode_reference(clip_vision, vae, image[0], box, crop_image)
    _tick(progress, 3, steps)

    bank = compute_reference_bank(xnemo.reference, scaled, clip_embed)
    positive, negative = xnemo_conditioning(clip_embed, bank, motion.tokens, reference_tokens)
    start = blurred_reference(scaled, motion.frames) / LATENT_SCALE
    _tick(progress, 4, steps)
    return ReferenceResult(positive=positive, negative=negative, latent=start, crop=crop, crop_image=crop_image)


def encode_reference(
    clip_vision, vae, image: torch.Tensor, box, crop_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP image embedding [1, 1, 768], reference latent [1, 4, h, w] x 0.18215), as the official computes them.

    CLIP sees the official 512 px square crop (bicubic to 224 inside `clip_image_embedding`) whatever the output size;
    the VAE sees `crop_image` [1, height, width, 3] (`face_crop.reference_crop`: in crop mode `official`, the official
    crop Lanczos-resized to the output size)."""
    square = face_crop.official_reference_crop(face_crop.to_u8(image), box).pixels
    return clip.clip_image_embedding(clip_vision, square), vae_adapter.encode_reference(vae, crop_image)


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
