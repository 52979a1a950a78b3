"""Every node of the pack: V3 schema in the X-NeMo category, a description, a tooltip on every input and output, and
a help page. Import directions are checked in tests/unit/test_layout.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnemo_pack.nodes import _all_nodes, register_model_folder

ROOT = Path(__file__).resolve().parents[2]
NODE_IDS = {
    "XNeMoLoader",
    "XNeMoEncodeMotion",
    "XNeMoReferenceCondition",
    "XNeMoSampleAnimation",
    "XNeMoInterpolateMotion",
    "XNeMoPasteBack",
    "XNeMoSaveMotion",
    "XNeMoLoadMotion",
    "XNeMoVAELoader",
    "XNeMoVAEDecode",
    "XNeMoSaveVideo",
}


def schemas():
    register_model_folder()  # as comfy_entrypoint does before ComfyUI reads the schemas
    return [node.define_schema() for node in _all_nodes()]


def test_every_node_is_registered():
    assert {s.node_id for s in schemas()} == NODE_IDS


@pytest.mark.parametrize("schema", schemas(), ids=lambda s: s.node_id)
def test_schema_documents_every_input_and_output(schema):
    assert schema.category == "X-NeMo"
    assert schema.display_name.startswith(("X-NeMo", "Load X-NeMo"))
    assert schema.description and len(schema.description) > 40
    for item in [*schema.inputs, *schema.outputs]:
        assert item.tooltip and len(item.tooltip) > 10, f"{schema.node_id}.{item.id} has no tooltip"
    assert (ROOT / "web" / "docs" / f"{schema.node_id}.md").is_file()
