"""What ComfyUI would reserve and load for X-NeMo sampling on a GPU of a given size, simulated on any machine.

No GPU is needed. The full-size official shapes are built on the meta device (no memory), and the meta device stands
in for the GPU. ComfyUI's own planning then runs unchanged, through `sample_animation` up to the moment the models
are loaded: `sampler_helpers.prepare_sampling` (with the pack's PREPARE_SAMPLING wrapper) -> `estimate_memory` ->
`BaseModel.memory_required` -> `model_management.load_models_gpu` -> `ModelPatcher.load`. Only what a real card would
answer is replaced: total and free memory, the VRAM state, and ComfyUI's NVIDIA defaults (PyTorch attention for the
memory formula, two async offload streams, no minimum weight ratio). Sampling stops right after loading.

Used by tests/comfy/test_memory_plan.py and by `benchmarks/bench.py --sections memplan` (the README's table).

    .venv/bin/python scripts/memory_plan.py            # the table for 8/12/16/24 GB cards, 24..1000 frames, 512 px
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3
META = "meta"
CARDS_GB = (8, 12, 16, 24)
FRAMES = (24, 48, 120, 250, 500, 1000)


class _Loaded(Exception):
    """Raised from inside load_models_gpu once the models are placed: the plan is known, nothing is sampled."""


@dataclass(frozen=True)
class ModelPlacement:
    name: str
    size: int  # bytes of weights
    loaded: int  # bytes ComfyUI put on the GPU; the rest is streamed per module on every call (lowvram)

    @property
    def full(self) -> bool:
        return self.loaded >= self.size


@dataclass(frozen=True)
class Plan:
    card_gb: float
    frames: int
    size_px: int
    memory_required: int  # what ComfyUI reserves for activations (both CFG halves)
    minimum_memory_required: int  # the part it must keep free (one CFG half); decides partial loading
    models: tuple[ModelPlacement, ...]
    cfg_rows_per_call: int  # rows per UNet call: both CFG halves of a window together, or one at a time

    @property
    def unet_fully_loaded(self) -> bool:
        return all(m.full for m in self.models)

    @property
    def weights(self) -> int:
        return sum(m.size for m in self.models)

    @property
    def loaded(self) -> int:
        return sum(m.loaded for m in self.models)


@contextlib.contextmanager
def simulated_gpu(total_bytes: int, load_device=None):
    """ComfyUI's model management answering as an NVIDIA card of `total_bytes` with nothing else on it.

    Free memory is the card minus the weights ComfyUI has loaded on it. Everything is restored, and every model
    unloaded, on exit.
    """
    import comfy.model_management as mm
    import torch

    device = torch.device(load_device or META)

    def loaded_bytes() -> int:
        return sum(lm.model.loaded_size() for lm in mm.current_loaded_models if lm.device == device)

    def get_free_memory(dev=None, torch_free_too=False):
        free = max(0, total_bytes - loaded_bytes())
        return (free, free) if torch_free_too else free

    def get_total_memory(dev=None, torch_total_too=False):
        return (total_bytes, total_bytes) if torch_total_too else total_bytes

    patches = {
        "vram_state": mm.VRAMState.NORMAL_VRAM,
        "get_free_memory": get_free_memory,
        "get_total_memory": get_total_memory,
        "pytorch_attention_flash_attention": lambda: True,
        "MIN_WEIGHT_MEMORY_RATIO": 0.0,
        "NUM_STREAMS": 2,
        "get_torch_device": lambda: device,
        "unet_offload_device": lambda: device,  # the simulated models live on the meta device, loaded or not
    }
    saved = {name: getattr(mm, name) for name in patches}
    for name, value in patches.items():
        setattr(mm, name, value)
    try:
        yield
    finally:
        mm.unload_all_models()
        for name, value in saved.items():
            setattr(mm, name, value)


def full_size_model(weight_dtype=None):
    """The denoising MODEL at the official full size (SD1.5 UNet + 21 X-NeMo sites), on the meta device.

    Built like Load X-NeMo builds it (same config, same sites, same `apply_xnemo`); call inside `simulated_gpu` so
    its patchers load onto the simulated card.
    """
    import comfy.ops
    import comfy.supported_models
    import torch

    from xnemo_pack.xnemo_core.adapters import checkpoint as ckpt
    from xnemo_pack.xnemo_core.adapters.unet_patch import apply_xnemo, make_patcher
    from xnemo_pack.xnemo_core.pure.constants import MOTION_TOKEN_DIM, TEMPORAL_MAX_FRAMES
    from xnemo_pack.xnemo_core.pure.layers import XNeMoSites

    dtype = weight_dtype or torch.float16
    shape = ckpt.UNetShape(
        model_channels=320,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        context_dim=768,
        in_channels=4,
        attention_levels=(True, True, True, False),
        has_output=True,
    )
    config = comfy.supported_models.SD15(shape.comfy_config())
    config.set_inference_dtype(dtype, None)
    base = config.get_model({}, "", device=torch.device(META))
    sites = XNeMoSites(
        ckpt.site_channels(shape),
        MOTION_TOKEN_DIM,
        8,
        TEMPORAL_MAX_FRAMES,
        dtype=dtype,
        device=torch.device(META),
        operations=comfy.ops.disable_weight_init,
    )
    return apply_xnemo(make_patcher(base), make_patcher(sites))


def plan_sampling(
    card_gb: float,
    frames: int,
    size_px: int = 512,
    context_length: int = 24,
    per_window: bool = True,
    weight_dtype=None,
) -> Plan:
    """Run Sample Animation on a simulated card until ComfyUI has loaded the models; return what it decided.

    per_window=False drops the pack's PREPARE_SAMPLING wrapper: ComfyUI then plans for the whole clip, as it did
    before issue 14.
    """
    import comfy.model_management as mm
    import torch

    from xnemo_pack.xnemo_core.adapters import sampling
    from xnemo_pack.xnemo_core.adapters.reference_bank import ReferenceBank
    from xnemo_pack.xnemo_core.adapters.unet_patch import xnemo_conditioning

    total = int(card_gb * GiB)
    seen = {}
    real_load = mm.load_models_gpu

    def load_and_stop(
        models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False
    ):
        real_load(models, memory_required, force_patch_weights, minimum_memory_required, force_full_load)
        seen.update(
            memory_required=memory_required,
            minimum=minimum_memory_required,
            models=tuple(
                ModelPlacement(type(lm.model.model).__name__, lm.model.model_size(), lm.model.loaded_size())
                for lm in mm.current_loaded_models
            ),
        )
        raise _Loaded

    h = w = size_px // 8
    original_prepare = sampling.WindowPlan.prepare_sampling
    with simulated_gpu(total):
        model = full_size_model(weight_dtype)
        positive, negative = xnemo_conditioning(
            torch.zeros(1, 1, 768), ReferenceBank({}, (h, w)), torch.zeros(frames, 32, 16), torch.zeros(1, 32, 16)
        )
        latent = torch.empty(frames, 4, h, w, device=META)
        mm.load_models_gpu = load_and_stop
        if not per_window:
            sampling.WindowPlan.prepare_sampling = lambda self, executor, *args, **kwargs: executor(*args, **kwargs)
        try:
            settings = sampling.SampleSettings(steps=1, context_length=context_length)
            sampling.sample_animation(model, positive, negative, latent, settings, noise=torch.empty_like(latent))
        except _Loaded:
            pass
        finally:
            mm.load_models_gpu = real_load
            sampling.WindowPlan.prepare_sampling = original_prepare
        # ComfyUI's own rule for batching CFG rows (samplers._calc_cond_batch): both halves of a window in one call
        # when 1.5x their estimate fits in the free memory left after loading.
        window = min(frames, context_length)
        free = mm.get_free_memory(torch.device(META))
        both = model.model.memory_required([2 * window, 4, h, w]) * 1.5 < free
    if "models" not in seen:
        raise RuntimeError("sampling never reached ComfyUI's model loading")
    return Plan(
        card_gb,
        frames,
        size_px,
        int(seen["memory_required"]),
        int(seen["minimum"]),
        seen["models"],
        2 * window if both else window,
    )


def table(cards=CARDS_GB, frames=FRAMES, size_px: int = 512, context_length: int = 24) -> list[str]:
    """The memory plan as Markdown rows: per card and clip length, the reservation and what ComfyUI loads, with the
    pack's per-window planning and (for comparison) with the whole clip as ComfyUI planned it before."""
    rows = [
        (
            "| card | frames | reservation per window (min) | UNet + sites loaded | CFG rows per call "
            "| before: reservation per clip (min) | before: loaded |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for card in cards:
        for n in frames:
            p = plan_sampling(card, n, size_px, context_length)
            b = plan_sampling(card, n, size_px, context_length, per_window=False)
            rows.append(
                f"| {card} GB | {n} | {p.memory_required / GiB:.2f} GiB ({p.minimum_memory_required / GiB:.2f}) | "
                f"{_placement(p)} | {p.cfg_rows_per_call} | {b.memory_required / GiB:.2f} GiB "
                f"({b.minimum_memory_required / GiB:.2f}) | {_placement(b)} |"
            )
    return rows


def _placement(p: Plan) -> str:
    if p.unet_fully_loaded:
        return f"fully ({p.loaded / GiB:.2f} GiB)"
    return f"partly ({p.loaded / GiB:.2f} of {p.weights / GiB:.2f} GiB, rest streamed)"


def _setup() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import bench

    bench.setup(force_cpu=True)


if __name__ == "__main__":
    _setup()
    print("\n".join(table()))
