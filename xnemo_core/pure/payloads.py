"""Payloads that travel between the pack's nodes (XNEMO_MOTION, XNEMO_CROP). Frozen, CPU tensors, never mutated:
ComfyUI caches node outputs and hands the same object to every consumer, so a change makes a new object."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True, kw_only=True)
class MotionSequence:
    """Per-frame X-NeMo motion of a driving clip (XNEMO_MOTION).

    Attributes:
        tokens (`Tensor[F, 32, 16]`, float32): motion key/value tokens fed to the 21 motion cross-attention sites.
        face_features (`Tensor[F, 512]`, float32): raw FAN face feature before fusion with the box embedding; what
            Interpolate Motion blends.
        f_rts (`Tensor[F, 3]`, float32): the (dy, dx, scale) box parameter fused into each frame's tokens.
        fusion (`torch.nn.Module`): the motion encoder's fusion head (box embedding + final projection + fixed code),
            fp32 on CPU, so motion can be re-fused after editing without the full encoder.
        boxes (`Tensor[F, 4]` or None): face box per driving frame, (x0, y0, x1, y1) in source pixels.
        face_found (`Tensor[F]` bool or None): False where the detector missed and the box was filled in.
        fps (float or None): frame rate of the driving clip when known.
        crop_scale (float or None): the driving crop's scale, which the reference's own motion crop (the negative
            branch) then uses too, so both motions are cut alike.
    """

    tokens: torch.Tensor
    face_features: torch.Tensor
    f_rts: torch.Tensor
    fusion: torch.nn.Module | None = None
    boxes: torch.Tensor | None = None
    face_found: torch.Tensor | None = None
    fps: float | None = None
    crop_scale: float | None = None

    def __post_init__(self) -> None:
        frames = self.tokens.shape[0]
        if self.tokens.ndim != 3:
            raise ValueError(f"motion tokens must be [frames, tokens, dim], got {tuple(self.tokens.shape)}")
        for name in ("face_features", "f_rts", "boxes", "face_found"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != frames:
                raise ValueError(f"motion {name} has {value.shape[0]} frames but tokens have {frames}")

    @property
    def frames(self) -> int:
        return int(self.tokens.shape[0])

    def with_(self, **changes) -> MotionSequence:
        """A new sequence with some fields replaced (never mutate one a node received)."""
        return replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class CropInfo:
    """Where the reference crop came from, so Paste Back can put animated frames into the original picture (XNEMO_CROP).

    Attributes:
        box (`tuple[int, int, int, int]`): crop box (x0, y0, x1, y1) in original-image pixels; may extend past the
            image, in which case the crop was padded.
        image_size (`tuple[int, int]`): (height, width) of the original image.
        crop_size (`tuple[int, int]`): (height, width) the crop was resized to (the generation size).
        face_box (`tuple[float, float, float, float]` or None): the detected face box in original-image pixels.
    """

    box: tuple[int, int, int, int]
    image_size: tuple[int, int]
    crop_size: tuple[int, int]
    face_box: tuple[float, float, float, float] | None = None
