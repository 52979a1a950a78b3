"""fp16 and bf16 end to end on the tiny weights, on the CPU (issue 14, item 3).

On a GPU that supports the dtype, ComfyUI keeps the weights in fp16/bf16 and computes in it too (no manual cast);
on the CPU it would compute in fp32. The runs here force the GPU behaviour (`unet_manual_cast` -> None) so every
layer really computes in half precision: motion features and tokens, the reference bank, one denoising step (one
window) and a short windowed clip are compared with the fp32 run of the same weights.

Tolerance: max |half - fp32| <= 16 unit roundoffs of the format x max |fp32| (u = 2^-11 for fp16, 2^-8 for bf16):
each stage is a few dozen layers of rounding that do not amplify on these weights. Reached (torch 2.14, CPU):
fp16 1.2-8.7 u, bf16 1.4-10.1 u (features and tokens lowest, the bank and the 3-step clip highest).

A TorchFunctionMode watches every op of the runs: no op may mix float dtypes (a bank, token, positional code or
start latent left in another precision would show as one), and the matmuls, convolutions and attentions must run in
the half dtype, apart from the fp32 fusion head and the start-latent blur (both tiny, fp32 on the CPU by design).
"""

from __future__ import annotations

import collections

import comfy.model_management as mm
import pytest
import torch
from torch.overrides import TorchFunctionMode

from xnemo_pack.xnemo_core.adapters import model as xmodel
from xnemo_pack.xnemo_core.adapters import sampling
from xnemo_pack.xnemo_core.adapters.reference_bank import compute_reference_bank
from xnemo_pack.xnemo_core.adapters.unet_patch import xnemo_conditioning
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES, LATENT_SCALE

pytestmark = pytest.mark.slow

UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPUTE_OPS = {"linear", "conv2d", "scaled_dot_product_attention", "baddbmm", "bmm", "matmul", "einsum"}
MOVES = {"to", "copy_", "type_as", "__get__", "__set__"}


class DtypeWatch(TorchFunctionMode):
    """Counts compute ops per dtype and records every op whose float tensors come in more than one dtype."""

    def __init__(self):
        super().__init__()
        self.compute = collections.Counter()
        self.mixed = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtypes = set()

        def visit(a):
            if isinstance(a, torch.Tensor) and a.dtype in FLOATS and a.dim() > 0:
                dtypes.add(a.dtype)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    visit(b)

        for a in (*args, *kwargs.values()):
            visit(a)
        name = getattr(func, "__name__", str(func))
        if name in COMPUTE_OPS:
            self.compute[next(iter(dtypes)) if len(dtypes) == 1 else "mixed"] += 1
        if len(dtypes) > 1 and name not in MOVES:
            self.mixed[(name, tuple(sorted(map(str, dtypes))))] += 1
        return func(*args, **kwargs)


def run(fixture_dir, inputs, weight_dtype: str):
    files = xmodel.XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    model, bundle = xmodel.load_xnemo(files, weight_dtype)
    watch = DtypeWatch()
    with watch:
        crops = inputs["driving_crops_u8"][:10].float() / 127.5 - 1
        features = bundle.encode_faces(crops)
        tokens = bundle.fuse(features, inputs["bbox_params"][:10])
        ref_features = bundle.encode_faces(inputs["ref_crop_u8"].float() / 127.5 - 1)
        ref_tokens = bundle.fuse(ref_features, inputs["ref_bbox_params"])
        bank = compute_reference_bank(bundle.reference, inputs["single.ref_latent"], inputs["clip_embed"])
        results = {
            "features": features,
            "tokens": tokens,
            "bank": torch.cat([v.float().flatten() for v in bank.blocks.values()]),
        }
        for name, frames, steps in (("one step", 8, 1), ("clip", 10, 3)):
            positive, negative = xnemo_conditioning(inputs["clip_embed"], bank, tokens[:frames], ref_tokens)
            latent = sampling.blurred_reference(inputs["single.ref_latent"], frames) / LATENT_SCALE
            settings = sampling.SampleSettings(steps=steps, context_length=8, context_overlap=4)
            results[name] = sampling.sample_animation(model, positive, negative, latent, settings)
    mm.unload_all_models()
    return results, watch, bundle


@pytest.fixture(scope="module")
def inputs(fixture_dir):
    from safetensors.torch import load_file

    return load_file(fixture_dir / "inputs.safetensors")


@pytest.fixture(scope="module")
def fp32(fixture_dir, inputs):
    results, watch, _ = run(fixture_dir, inputs, "fp32")
    assert not watch.mixed
    return results


@pytest.mark.parametrize("weight_dtype", ["fp16", "bf16"])
def test_half_precision_matches_fp32(fixture_dir, inputs, fp32, weight_dtype, monkeypatch):
    monkeypatch.setattr(mm, "unet_manual_cast", lambda *args, **kwargs: None)  # compute in the weights' dtype
    half, watch, bundle = run(fixture_dir, inputs, weight_dtype)
    dtype = HALF[weight_dtype]
    assert bundle.precision.weight == dtype and bundle.precision.compute == dtype

    assert not watch.mixed, f"ops mixing float dtypes: {dict(watch.mixed)}"
    total = sum(watch.compute.values())
    print(f"{weight_dtype}: compute ops by dtype {dict(watch.compute)}")
    assert watch.compute[dtype] >= 0.99 * total and watch.compute[torch.float32] <= 16

    tolerance = 16 * UNIT_ROUNDOFF[weight_dtype]
    for stage, reference in fp32.items():
        err = (half[stage].float() - reference).abs().max().item()
        scale = reference.abs().max().item()
        units = err / scale / UNIT_ROUNDOFF[weight_dtype]
        print(f"{weight_dtype} {stage}: max abs err {err:.3g} of {scale:.3g} = {units:.1f} u")
        assert err > 0, f"{stage} did not run in {weight_dtype}"
        assert err <= tolerance * scale


def test_auto_picks_the_official_dtype(monkeypatch):
    """auto = what the official runs on the GPU (fp16), bf16 where fp16 is not usable, fp32 on the CPU."""
    assert xmodel.pick_precision("auto", 10**9).weight == torch.float32  # this machine: CPU
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda", 0))
    for fp16, bf16, expected in (
        (True, True, torch.float16),
        (False, True, torch.bfloat16),
        (False, False, torch.float32),
    ):
        monkeypatch.setattr(mm, "should_use_fp16", lambda *a, _v=fp16, **k: _v)
        monkeypatch.setattr(mm, "should_use_bf16", lambda *a, _v=bf16, **k: _v)
        precision = xmodel.pick_precision("auto", 10**9)
        assert precision.weight == expected, f"fp16 usable {fp16}, bf16 usable {bf16}"
        assert precision.manual_cast is None, "computes in the dtype it stores"
