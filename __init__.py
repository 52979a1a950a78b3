"""X-NeMo for ComfyUI.

ComfyUI imports this package from `custom_nodes/` and calls `comfy_entrypoint()`. Nothing heavy happens at import:
the node modules (and ComfyUI's own packages) are imported when the entrypoint runs, so the pure-torch engine in
`xnemo_core` stays importable without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import XNeMoExtension, register_model_folder
    from .nodes.core_version import log_core_version
    from .nodes.routes import register_routes

    log_core_version()
    register_model_folder()
    register_routes()
    return XNeMoExtension()
