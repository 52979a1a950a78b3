"""Node help pages in web/docs: one per node, in the shape the frontend's help panel shows."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"
NODE_IDS = [
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
]


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_help_page_shape(node_id):
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("# X-NeMo "), "H1 is the display name"
    assert "## Defaults and tips" in lines
    assert "<script" not in text.lower()
