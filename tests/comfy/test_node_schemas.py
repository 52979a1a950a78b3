"""Every node of the pack: V3 schema in the X-NeMo category, a description, a tooltip on every input and output, and
import directions kept (nodes -> xnemo_core; pure-torch rooms never import ComfyUI)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from xnemo_pack.nodes import _all_nodes, register_model_folder

ROOT = Path(__file__).resolve().parents[2]
PURE_ROOMS = ["motion_encoder", "layers", "face", "motion_ops", "compose", "payloads", "keys", "constants", "errors"]
NODE_IDS = {"XNeMoLoader", "XNeMoEncodeMotion", "XNeMoReferenceCondition", "XNeMoSampleAnimation",
            "XNeMoInterpolateMotion", "XNeMoPasteBack"}


def schemas():
    register_model_folder()  # as comfy_entrypoint does before ComfyUI reads the schemas
    return [node.define_schema() for node in _all_nodes()]


def test_the_six_nodes_are_registered():
    assert {s.node_id for s in schemas()} == NODE_IDS


@pytest.mark.parametrize("schema", schemas(), ids=lambda s: s.node_id)
def test_schema_documents_every_input_and_output(schema):
    assert schema.category == "X-NeMo"
    assert schema.display_name.startswith(("X-NeMo", "Load X-NeMo"))
    assert schema.description and len(schema.description) > 40
    for item in [*schema.inputs, *schema.outputs]:
        assert item.tooltip and len(item.tooltip) > 10, f"{schema.node_id}.{item.id} has no tooltip"
    assert (ROOT / "web" / "docs" / f"{schema.node_id}.md").is_file()


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("room", PURE_ROOMS)
def test_pure_rooms_do_not_import_comfyui(room):
    imports = imported_modules(ROOT / "xnemo_core" / f"{room}.py")
    comfy = {m for m in imports if m.split(".")[0] in {"comfy", "comfy_api", "folder_paths", "nodes", "latent_preview"}}
    assert not comfy, f"xnemo_core/{room}.py imports {comfy}"


def test_engine_never_imports_the_nodes():
    for path in (ROOT / "xnemo_core").glob("*.py"):
        assert not any(m.startswith(("..nodes", "nodes")) for m in imported_modules(path)), path.name
