"""Custom ComfyUI types of the pack, declared once."""

from comfy_api.latest import io

XNeMo = io.Custom("XNEMO")
XNeMoMotion = io.Custom("XNEMO_MOTION")
XNeMoCrop = io.Custom("XNEMO_CROP")

# Core's face types (ComfyUI 0.30+, comfy_extras/nodes_mediapipe.py), declared by name so the inputs also exist on
# the 0.3.75 floor, where nothing produces them. Sockets only: core draws BOUNDING_BOX as a widget otherwise.
CoreFaceLandmarks = io.Custom("FACE_LANDMARKS")
CoreBoundingBox = io.Custom("BOUNDING_BOX")
SOCKET_ONLY = {"forceInput": True}

CATEGORY = "X-NeMo"
