"""Where the face detector runs and which model file it reads: BlazeFace on ComfyUI's torch device (the GPU when
there is one), from the pack's models/ folder, else from ComfyUI's models/x-nemo/. Nothing is ever downloaded.
Before each batch the detector asks ComfyUI's memory manager for the device memory it needs (models are offloaded to
make room), as core's upscale node does for its tiles."""

from __future__ import annotations

from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch

from ..pure import blazeface, face_track
from ..pure.constants import MODEL_FOLDER


def blazeface_model_path() -> Path:
    """The bundled model file, or the same file in models/x-nemo/; a clear error naming both places otherwise."""
    if blazeface.BUNDLED_MODEL.is_file():
        return blazeface.BUNDLED_MODEL
    found = folder_paths.get_full_path(MODEL_FOLDER, blazeface.MODEL_NAME)
    if found:
        return Path(found)
    raise blazeface.BlazeFaceModelError(
        f"the BlazeFace model {blazeface.MODEL_NAME} is in neither the pack's models/ folder "
        f"({blazeface.BUNDLED_MODEL.parent}) nor ComfyUI/models/{MODEL_FOLDER}/: restore the pack's models/ folder "
        f"(reinstall or git checkout models/), or copy {blazeface.MODEL_NAME} from the official X-NeMo repository "
        f"into models/{MODEL_FOLDER}/; or pick the 'haar' detector"
    )


class DeviceReservation:
    """`reserve(bytes)` for the detector: ComfyUI frees that much memory on `device` (unloading models if needed)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, nbytes: int) -> None:
        mm.free_memory(nbytes, self.device)


def face_detector(name: str) -> face_track.FaceDetector:
    """The named detector, ready for ComfyUI: BlazeFace on ComfyUI's torch device with its checked model file,
    reserving its memory through ComfyUI before each batch."""
    if name == "blazeface":
        device = mm.get_torch_device()
        return face_track.get_detector(name, device, blazeface_model_path(), reserve=DeviceReservation(device))
    return face_track.get_detector(name)
