"""The pack's V3 nodes. Each `nodes/<family>.py` ends with a `NODES` list; this module gathers them."""

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from ..xnemo_core.pure.constants import MODEL_FOLDER


def register_model_folder() -> None:
    """Register `models/x-nemo/` (keeping any paths users added in extra_model_paths.yaml)."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    if default not in paths:
        paths = [default, *paths]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, {".pth", ".pt", ".safetensors"})


def _all_nodes() -> list[type[io.ComfyNode]]:
    from . import interpolate, loader, motion, motion_file, paste_back, reference, sample, save_video, vae

    out: list[type[io.ComfyNode]] = []
    for module in (loader, motion, reference, sample, vae, interpolate, motion_file, paste_back, save_video):
        out.extend(module.NODES)
    return out


class XNeMoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _all_nodes()
