"""The 21 X-NeMo sites enter ComfyUI's UNet only while the model is patched, at the official positions, and leave it
exactly as it was: the same modules, in the same order, in every block."""

from __future__ import annotations

import pytest
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, SpatialTransformer, Upsample

from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.adapters.unet_patch import KEY
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES
from xnemo_pack.xnemo_core.pure.layers import XNeMoSite


@pytest.fixture(scope="module")
def model(fixture_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")[0]


def block_layout(unet) -> list[list[int]]:
    return [[id(m) for m in block] for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]]


def test_sites_are_injected_while_patched_and_ejected_exactly(model):
    unet = model.model.diffusion_model
    before = block_layout(unet)
    sites = list(model.get_additional_models_with_key(KEY)[0].model.sites)
    assert not any(isinstance(m, XNeMoSite) for block in unet.input_blocks for m in block)

    model.patch_model()
    try:
        blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
        placed = [(b, i) for b, block in enumerate(blocks) for i, m in enumerate(block) if isinstance(m, XNeMoSite)]
        assert [id(blocks[b][i]) for b, i in placed] == [id(s) for s in sites], "every site once, in diffusers order"
        for b, i in placed:  # the official positions: after the block's last attention, else its first ResBlock
            kinds = [type(m) for m in blocks[b] if not isinstance(m, XNeMoSite)]
            anchor = (
                len(kinds) - kinds[::-1].index(SpatialTransformer)
                if SpatialTransformer in kinds
                else kinds.index(ResBlock) + 1
            )
            assert i == anchor, f"block {b}: site at {i}, expected after module {anchor - 1}"
            assert all(not isinstance(m, (Downsample, Upsample)) for m in list(blocks[b])[:i])
    finally:
        model.unpatch_model()
    assert block_layout(unet) == before, "ejecting must restore every block exactly"

    model.patch_model()  # and again: no site is left over or doubled by a second cycle
    model.unpatch_model()
    assert block_layout(unet) == before
