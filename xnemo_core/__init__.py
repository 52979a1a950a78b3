"""X-NeMo engine. Pure-torch rooms (motion_encoder, layers, face, motion_ops, compose, payloads) never import ComfyUI;
adapter rooms (checkpoint, unet_patch, reference, sampling) do."""
