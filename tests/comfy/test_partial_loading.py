"""X-NeMo under ComfyUI's per-module loading: every tensor used in forward is moved and cast by ComfyUI (issue 14, 2).

On a GPU, ComfyUI rarely moves a whole model with `.to()`. Without --highvram it loads module by module
(`ModelPatcher.load`): modules holding weights are moved while they fit, the rest stay on the offload device and
are cast per call by `comfy.ops` (lowvram). A tensor that belongs to no weight-holding module (a fixed table kept as
a buffer of a parent module) is never moved, and meets the activations on the wrong device. The motion encoder's
`pos_embed` did exactly that on every GPU.

Two checks, on the CPU:
- devices: the meta device stands in for the GPU. The sites, the motion encoder and the ReferenceNet are loaded onto
  it by `ModelPatcher.patch_model` (whole model fitting, and a small budget), then run with meta inputs under a
  TorchFunctionMode that fails any op whose tensors sit on two devices;
- numbers: the whole chain (motion features, reference bank, a windowed clip) runs with ComfyUI's load budget forced
  small, so most modules are cast per call and a weight patch is applied on the fly (lowvram patches), and matches
  the fully loaded fp32 run.
"""

from __future__ import annotations

import comfy.model_management as mm
import pytest
import torch
from torch.overrides import TorchFunctionMode

from xnemo_pack.xnemo_core.adapters import sampling
from xnemo_pack.xnemo_core.adapters.model import XNeMoFiles, load_xnemo
from xnemo_pack.xnemo_core.adapters.reference_bank import compute_reference_bank, run_reference_unet
from xnemo_pack.xnemo_core.adapters.unet_patch import KEY, xnemo_conditioning
from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

META = torch.device("meta")
MOVES = {"to", "copy_", "cpu", "cuda", "__get__", "__set__"}


def load(fixture_dir):
    files = XNeMoFiles(**{role: str(fixture_dir / f"{stem}.pth") for role, stem in CHECKPOINT_FILES.items()})
    return load_xnemo(files, "fp32")


class OneDevicePerOp(TorchFunctionMode):
    """Fails any torch op (other than an explicit move) whose tensor arguments sit on more than one device.

    Stricter than torch itself: F.linear(meta, cpu) silently returns meta, for example."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = set()

        def visit(a):
            if isinstance(a, torch.Tensor) and a.dim() > 0:
                devices.add(a.device)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    visit(b)

        for a in (*args, *kwargs.values()):
            visit(a)
        name = getattr(func, "__name__", str(func))
        if len(devices) > 1 and name not in MOVES:
            raise AssertionError(
                f"torch.{name} mixes devices {sorted(map(str, devices))}: a tensor used in forward "
                f"is not moved by ComfyUI"
            )
        self.ops += 1
        return func(*args, **kwargs)


def load_on_meta(patcher, fraction: float) -> None:
    """ComfyUI's per-module load onto the stand-in GPU with a budget of `fraction` of the model's weights."""
    budget = max(1, int(patcher.model_size() * fraction))
    patcher.patch_model(device_to=META, lowvram_model_memory=budget)
    lowvram = patcher.model.model_lowvram
    assert lowvram == (fraction < 1), "the budget should decide between per-module casting and a full load"


@pytest.mark.parametrize("fraction", [2.0, 0.3], ids=["fits", "partial"])
def test_every_tensor_follows_the_activations(fixture_dir, fraction, monkeypatch):
    model, bundle = load(fixture_dir)  # fresh: loading onto meta drops the values
    sites = model.get_additional_models_with_key(KEY)[0]

    load_on_meta(bundle.motion, fraction)
    with OneDevicePerOp() as mode, torch.no_grad():
        tokens = bundle.motion.model(torch.zeros(2, 3, 224, 224, device=META), torch.zeros(2, 3, device=META))
    assert tokens.device == META and tokens.shape == (2, 32, 16) and mode.ops > 100

    load_on_meta(bundle.reference, fraction)
    bundle.reference.load_device = META  # run_reference_unet sends its inputs to the patcher's load device
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: None)  # loaded above with this budget
    monkeypatch.setattr(
        mm, "get_free_memory", lambda dev=None, torch_free_too=False: (8 << 30, 8 << 30) if torch_free_too else 8 << 30
    )  # what ComfyUI's attention asks the card
    with OneDevicePerOp() as mode:
        blocks, out = run_reference_unet(bundle.reference, torch.zeros(1, 4, 16, 16), torch.zeros(1, 1, 768))
    assert out.device == META and blocks and mode.ops > 100

    load_on_meta(sites, fraction)
    with OneDevicePerOp() as mode, torch.no_grad():
        for site in sites.model.sites:
            channels = site.motion.temporal_transformer.proj_in.in_features
            x = torch.zeros(8, channels, 4, 4, device=META)
            assert site(x, torch.zeros(8, 32, 16, device=META), 4).device == META
    assert mode.ops > 100


def test_pos_embed_check_catches_an_unmoved_table(fixture_dir):
    """The check above would have caught issue 14's bug: a table used as `.to(dtype)` only stays behind."""
    _, bundle = load(fixture_dir)
    load_on_meta(bundle.motion, 2.0)
    patch = bundle.motion.model.model.att_1.pos_embed
    assert patch.pos_embed.device.type == "cpu", "ComfyUI leaves a weightless module's buffer on the offload device"
    original = type(patch).forward
    type(patch).forward = lambda self, x: self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
    try:
        with pytest.raises(AssertionError, match="mixes devices"), OneDevicePerOp(), torch.no_grad():
            bundle.motion.model.encode_face(torch.zeros(1, 3, 224, 224, device=META))
    finally:
        type(patch).forward = original


# ---------------------------------------------------------------------------------------------------------------
# Numbers: forced partial load on the CPU against the full load
# ---------------------------------------------------------------------------------------------------------------

BUDGET = 128 * 1024  # bytes per model: the 7-28 MB tiny models load partly, their largest modules cast per call


def largest_weight(patcher) -> str:
    """The biggest weight: ComfyUI loads the largest modules first, so under BUDGET this one is cast per call."""
    weights = {k: v.numel() for k, v in patcher.model.state_dict().items() if k.endswith(".weight")}
    return max(weights, key=weights.get)


def run_chain(fixture_dir, inputs, budget: int | None):
    model, bundle = load(fixture_dir)
    g = torch.Generator().manual_seed(0)
    sites = model.get_additional_models_with_key(KEY)[0]
    for patcher in (sites, model):  # a LoRA-like weight difference on each, applied on the fly when cast
        key = largest_weight(patcher)
        weight = patcher.get_model_object(key)
        patcher.add_patches({key: (0.05 * torch.randn(weight.shape, generator=g),)}, 1.0)
    original = mm.LoadedModel.model_load
    if budget is not None:  # what a small card makes load_models_gpu pass down
        mm.LoadedModel.model_load = lambda self, lowvram_model_memory=0, force_patch_weights=False: original(
            self, budget, force_patch_weights
        )
    try:
        crops = inputs["driving_crops_u8"][:4].float() / 127.5 - 1
        features = bundle.encode_faces(crops)
        state = {
            type(m.model.model).__name__: (m.model.model.model_lowvram, m.model.lowvram_patch_counter())
            for m in mm.current_loaded_models
        }
        bank = compute_reference_bank(bundle.reference, inputs["single.ref_latent"], inputs["clip_embed"])
        frames = 6
        tokens = bundle.fuse(features, inputs["bbox_params"][:4]).repeat(2, 1, 1)[:frames]
        positive, negative = xnemo_conditioning(inputs["clip_embed"], bank, tokens, tokens[:1])
        latent = sampling.blurred_reference(inputs["single.ref_latent"], frames) / 0.18215
        clip = sampling.sample_animation(
            model, positive, negative, latent, sampling.SampleSettings(steps=1, context_length=4, context_overlap=2)
        )
        state.update(
            {
                type(m.model.model).__name__: (m.model.model.model_lowvram, m.model.lowvram_patch_counter())
                for m in mm.current_loaded_models
            }
        )
        return features, bank, clip, state
    finally:
        mm.LoadedModel.model_load = original
        mm.unload_all_models()


@pytest.mark.slow
def test_partial_load_matches_full_load(fixture_dir, monkeypatch):
    from safetensors.torch import load_file

    from xnemo_pack.xnemo_core.pure import cpu_linear

    # One GEMM kernel for both loads: layers cast per call keep ComfyUI's forward (F.linear), so the oneDNN path of
    # the fully loaded layers (pure/cpu_linear, float32 CPU only) would add a summation-order difference to the
    # comparison of where the weights are read from.
    monkeypatch.setattr(cpu_linear, "_OP", None)

    inputs = load_file(fixture_dir / "inputs.safetensors")
    full = run_chain(fixture_dir, inputs, None)
    part = run_chain(fixture_dir, inputs, BUDGET)
    print("full:", full[3], "\npartial:", part[3])
    assert not any(lowvram for lowvram, _ in full[3].values())
    assert all(part[3][name][0] for name in ("MotionEncoder", "UNetModel", "BaseModel", "XNeMoSites"))
    assert part[3]["BaseModel"][1] >= 1 and part[3]["XNeMoSites"][1] >= 1, "weight patches applied per call"
    errors = {
        "features": (full[0] - part[0]).abs().max().item(),
        "bank": max((full[1].blocks[k].float() - part[1].blocks[k].float()).abs().max().item() for k in full[1].blocks),
        "clip": (full[2] - part[2]).abs().max().item(),
    }
    print("max abs difference, partial vs full:", errors)
    # Same fp32 weights, same fp32 maths: only the place the weights are read from differs.
    assert max(errors.values()) <= 1e-5
