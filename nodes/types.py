"""Custom ComfyUI types of the pack, declared once."""

from comfy_api.latest import io

XNeMo = io.Custom("XNEMO")
XNeMoMotion = io.Custom("XNEMO_MOTION")
XNeMoCrop = io.Custom("XNEMO_CROP")

CATEGORY = "X-NeMo"
