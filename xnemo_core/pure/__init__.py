"""Pure rooms: torch, numpy and OpenCV only; nothing here imports ComfyUI (tests/unit/test_layout.py)."""
