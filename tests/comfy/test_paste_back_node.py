"""X-NeMo Paste Back node, called in-process against the real comfy_api."""

from __future__ import annotations

import pytest
import torch

from xnemo_pack.nodes.paste_back import NODES, XNeMoPasteBack
from xnemo_pack.xnemo_core.pure.payloads import CropInfo


def test_schema_is_complete():
    assert NODES == [XNeMoPasteBack]
    schema = XNeMoPasteBack.define_schema()
    schema.validate()
    assert (schema.node_id, schema.display_name, schema.category) == ("XNeMoPasteBack", "X-NeMo Paste Back", "X-NeMo")
    info = XNeMoPasteBack.GET_NODE_INFO_V1()
    inputs = info["input"]["required"]
    assert list(inputs) == ["images", "crop", "original", "feather", "color_match"]
    assert inputs["crop"][0] == "XNEMO_CROP"
    assert all(spec[1].get("tooltip") for spec in inputs.values())
    assert info["output"] == ["IMAGE", "MASK"] and all(info["output_tooltips"])


def test_execute_composites_into_the_original():
    crop = CropInfo(box=(-8, 10, 40, 58), image_size=(64, 96), crop_size=(24, 24))
    original = torch.rand(1, 64, 96, 3)
    out = XNeMoPasteBack.execute(torch.ones(5, 24, 24, 3), crop, original, 0.1, True)
    frames, mask = out.result
    assert frames.shape == (5, 64, 96, 3) and mask.shape == (5, 64, 96)
    assert torch.equal(frames[:, :10], original.expand(5, -1, -1, -1)[:, :10])


def test_execute_rejects_a_mismatched_batch():
    crop = CropInfo(box=(0, 0, 24, 24), image_size=(64, 96), crop_size=(24, 24))
    with pytest.raises(ValueError, match="batch of the same length"):
        XNeMoPasteBack.execute(torch.ones(5, 24, 24, 3), crop, torch.rand(2, 64, 96, 3), 0.1, False)
