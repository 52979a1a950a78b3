"""Adapter rooms: where X-NeMo meets ComfyUI (comfy.*); they import pure/ and each other, never the pipeline."""
