"""ComfyUI plans memory for one window of Sample Animation, not for the clip (issue 14, item 1).

Simulated on the CPU with scripts/memory_plan.py: full-size official shapes on the meta device, ComfyUI's own planning
functions, and total/free device memory answering as an 8, 12 or 24 GB NVIDIA card (fp16 weights, PyTorch attention).
"""

from __future__ import annotations

import memory_plan
import pytest

pytestmark = pytest.mark.slow

GiB = memory_plan.GiB
PX = 512


def comfy_estimate(rows: int) -> float:
    """ComfyUI's own activation estimate for `rows` latent rows at 512 px (BaseModel.memory_required, SD1.5 fp16)."""
    import torch

    with memory_plan.simulated_gpu(8 * GiB):
        model = memory_plan.full_size_model(torch.float16)
        return model.model.memory_required([rows, 4, PX // 8, PX // 8])


def test_estimate_is_one_window_from_24_to_1000_frames():
    plans = {n: memory_plan.plan_sampling(8, n, PX) for n in (24, 1000)}
    window = comfy_estimate(2 * 24)  # the CFG rows of one 24-frame window
    for n, p in plans.items():
        print(
            f"{n} frames: reservation {p.memory_required / GiB:.2f} GiB, minimum {p.minimum_memory_required / GiB:.2f}"
        )
        assert p.memory_required == pytest.approx(window, rel=1e-9)
        assert p.minimum_memory_required == pytest.approx(window / 2, rel=1e-9)
    # Without the pack's PREPARE_SAMPLING wrapper ComfyUI sizes it from the whole clip: 1000/24 times more.
    clip = memory_plan.plan_sampling(8, 1000, PX, per_window=False)
    print(f"whole clip (before issue 14): {clip.memory_required / GiB:.1f} GiB")
    assert clip.memory_required == pytest.approx(comfy_estimate(2 * 1000), rel=1e-9)
    assert clip.memory_required > 40 * plans[1000].memory_required
    assert not clip.unet_fully_loaded, "planning for the clip streams the UNet on an 8 GB card"


@pytest.mark.parametrize("card_gb", [8, 12, 24])
def test_unet_and_sites_load_fully(card_gb):
    p = memory_plan.plan_sampling(card_gb, 1000, PX)
    names = sorted(m.name for m in p.models)
    print(
        f"{card_gb} GB, 1000 frames: "
        + ", ".join(f"{m.name} {m.loaded / GiB:.2f}/{m.size / GiB:.2f} GiB" for m in p.models)
        + f", {p.cfg_rows_per_call} rows per call"
    )
    assert names == ["BaseModel", "XNeMoSites"], "the UNet and its 21 sites are what sampling loads"
    assert p.weights == pytest.approx(3.14 * GiB, rel=0.01)  # 1.69B parameters in fp16
    assert p.unet_fully_loaded
    # ComfyUI batches both CFG halves of a window when 1.5x their estimate fits beside the weights.
    assert p.cfg_rows_per_call == (24 if card_gb == 8 else 48)
