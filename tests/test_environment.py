"""The test environment is the real one: ComfyUI's own `comfy` package imports in-process."""

import importlib


def test_real_comfy_package_imports():
    model_management = importlib.import_module("comfy.model_management")
    openaimodel = importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel")
    assert hasattr(model_management, "get_torch_device")
    assert hasattr(openaimodel, "UNetModel")
    assert ".comfyui" in model_management.__file__ or "COMFYUI_DIR" in __import__("os").environ
