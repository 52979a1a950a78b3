"""Every core node that patches a MODEL or a guider, between Load X-NeMo and Sample Animation / core KSampler: the
README table "Works with core nodes", enforced. In-process, the tiny fixture weights, 2 frames, one window, 1 step.

works: the run is finite, differs from the unpatched run, and the reference and the motion still act (removing the
reference read, or replacing the driving motion by the reference's own, changes the output). Run through Sample
Animation only: for one window it is core KSampler's CFGGuider with other sigmas (test_sampling_nodes checks the two
give the same clip), so the patches see the same calls.
refused: Sample Animation and core KSampler stop before any model call with an IncompatibleModelError naming the node.
A node missing in this ComfyUI is skipped with a reason that names the version (run once more with
COMFYUI_DIR=$PWD/.comfyui-floor for the floor).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import comfy.conds
import comfy.model_patcher
import comfy.samplers
import folder_paths
import pytest
import torch
from comfyui_version import __version__ as COMFYUI_VERSION
from safetensors.torch import load_file, save_file

import nodes as comfy_nodes
from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.xnemo_core.adapters import core_patches, unet_patch
from xnemo_pack.xnemo_core.adapters import reference_bank as reference
from xnemo_pack.xnemo_core.adapters.sampling import blurred_reference
from xnemo_pack.xnemo_core.pure.constants import PATCH_KEY
from xnemo_pack.xnemo_core.pure.errors import IncompatibleModelError

FRAMES = 2  # one window: context_length FRAMES
SEED = 3


@dataclass(frozen=True)
class Case:
    node: str  # node id, as in the README table
    module: str  # where the class lives (comfy_extras.* or nodes)
    cls: str
    works: bool
    inputs: dict = field(default_factory=dict)  # non-default inputs, so the effect shows at 16x16 latents
    steps: int = 1
    mask: bool = False  # the latent carries a noise mask (the unpatched run gets the same mask)


CASES = [
    Case("LoraLoaderModelOnly", "nodes", "LoraLoaderModelOnly", True, {"lora_name": "xnemo_test_lora.safetensors"}),
    Case("PerturbedAttentionGuidance", "comfy_extras.nodes_pag", "PerturbedAttentionGuidance", True),
    Case("SelfAttentionGuidance", "comfy_extras.nodes_sag", "SelfAttentionGuidance", True, {"scale": 1.0}),
    Case("FreeU", "comfy_extras.nodes_freelunch", "FreeU", True),
    Case("FreeU_V2", "comfy_extras.nodes_freelunch", "FreeU_V2", True),
    Case("RescaleCFG", "comfy_extras.nodes_model_advanced", "RescaleCFG", True),
    Case("ModelSamplingDiscrete", "comfy_extras.nodes_model_advanced", "ModelSamplingDiscrete", False),
    Case("PerpNeg", "comfy_extras.nodes_perpneg", "PerpNeg", False),
    Case("TomePatchModel", "comfy_extras.nodes_tomesd", "TomePatchModel", True, {"ratio": 0.5}),
    Case("HyperTile", "comfy_extras.nodes_hypertile", "HyperTile", False, {"tile_size": 32}),
    Case("APG", "comfy_extras.nodes_apg", "APG", True),
    Case("CFGZeroStar", "comfy_extras.nodes_cfg", "CFGZeroStar", True),
    Case("CFGNorm", "comfy_extras.nodes_cfg", "CFGNorm", True),
    Case("Mahiro", "comfy_extras.nodes_mahiro", "Mahiro", True),
    Case("NAGuidance", "comfy_extras.nodes_nag", "NAGuidance", True),
    Case("FreSca", "comfy_extras.nodes_fresca", "FreSca", True, {"freq_cutoff": 2}),
    Case("TCFG", "comfy_extras.nodes_tcfg", "TCFG", True),
    Case("UNetSelfAttentionMultiply", "comfy_extras.nodes_attention_multiply", "UNetSelfAttentionMultiply", True,
         {"k": 0.5, "v": 0.5}),
    # attn2 reads one CLIP token (a softmax over one key is 1): q and k multipliers cannot act, v and out do
    Case("UNetCrossAttentionMultiply", "comfy_extras.nodes_attention_multiply", "UNetCrossAttentionMultiply", True,
         {"v": 0.5}),
    Case("DifferentialDiffusion", "comfy_extras.nodes_differential_diffusion", "DifferentialDiffusion", True,
         steps=2, mask=True),
    Case("EasyCache", "comfy_extras.nodes_easycache", "EasyCacheNode", True,
         {"reuse_threshold": 3.0, "start_percent": 0.0}, steps=4),
    Case("LazyCache", "comfy_extras.nodes_easycache", "LazyCacheNode", True,
         {"reuse_threshold": 3.0, "start_percent": 0.0}, steps=4),
    Case("ContextWindowsManual", "comfy_extras.nodes_context_windows", "ContextWindowsManualNode", False,
         {"context_length": 1, "context_overlap": 0}),
]  # fmt: skip


def node_class(case: Case):
    try:
        module = importlib.import_module(case.module)
    except ModuleNotFoundError:
        module = None
    if not hasattr(module, case.cls):
        pytest.skip(f"{case.node} is not in ComfyUI {COMFYUI_VERSION}")
    return getattr(module, case.cls)


def schema_defaults(cls) -> dict:
    """Every input at its default (the first option of a combo), as the UI would queue a fresh node."""
    if hasattr(cls, "define_schema"):
        out = {}
        for spec in cls.define_schema().inputs:
            default = getattr(spec, "default", None)
            if default is None and getattr(spec, "options", None):
                default = spec.options[0]
            out[spec.id] = default
        return out
    out = {}
    for name, spec in cls.INPUT_TYPES()["required"].items():
        out[name] = spec[0][0] if isinstance(spec[0], list) else (spec[1].get("default") if len(spec) > 1 else None)
    return out


def run_node(cls, **inputs):
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        return out[0] if isinstance(out, tuple) else out.args[0]
    return getattr(cls(), cls.FUNCTION)(**inputs)[0]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, loaded):
    """A LoRA on one attention projection of the UNet (attn1 to_k of the first transformer block), in ComfyUI's
    generic key format, registered as a `loras` file."""
    folder = tmp_path_factory.mktemp("loras")
    weight = loaded[0].model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_k.weight
    g = torch.Generator().manual_seed(0)
    prefix = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k"
    save_file(
        {
            f"{prefix}.lora_up.weight": torch.randn(weight.shape[0], 4, generator=g),
            f"{prefix}.lora_down.weight": torch.randn(4, weight.shape[1], generator=g),
        },
        str(folder / "xnemo_test_lora.safetensors"),
    )
    folder_paths.add_model_folder_path("loras", str(folder))
    return folder


@pytest.fixture(scope="module")
def conds(loaded, fixture_dir):
    """The CFG pair, the same without the reference read, the same with the driving motion replaced by the
    reference's own, and the start latent."""
    inputs = load_file(fixture_dir / "inputs.safetensors")
    golden = load_file(fixture_dir / "golden.safetensors")
    bank = reference.compute_reference_bank(loaded[1].reference, inputs["multi.ref_latent"], inputs["clip_embed"])
    drive, own = golden["motenc.drive.tokens"][:FRAMES], golden["motenc.ref.tokens"]
    pair = unet_patch.xnemo_conditioning(inputs["clip_embed"], bank, drive, own)
    no_motion = unet_patch.xnemo_conditioning(inputs["clip_embed"], bank, own[:1].expand(FRAMES, -1, -1), own)
    no_reference = unet_patch.xnemo_conditioning(inputs["clip_embed"], bank, drive, own)
    for cond in no_reference[0]:
        cond[1]["model_conds"][unet_patch.REF_COND] = comfy.conds.CONDRegular(torch.zeros(FRAMES, 1))
    latent = {"samples": blurred_reference(inputs["multi.ref_latent"], FRAMES) / 0.18215}
    return {"full": pair, "no_motion": no_motion, "no_reference": no_reference, "latent": latent}


def with_mask(latent: dict) -> dict:
    h, w = latent["samples"].shape[-2:]
    ramp = torch.linspace(0.0, 1.0, w).expand(1, h, w).contiguous()  # soft mask: what DifferentialDiffusion reads
    return {**latent, "noise_mask": ramp}


def animate(model, conds, variant="full", steps=1, mask=False):
    positive, negative = conds[variant]
    latent = with_mask(conds["latent"]) if mask else conds["latent"]
    out = XNeMoSampleAnimation.execute(
        model, positive, negative, latent, SEED, steps, 2.5, "euler", "normal", 1.0, FRAMES, 1, True, "seeded"
    )
    return out.args[0]["samples"]


def ksample(model, conds, steps=1, mask=False):
    positive, negative = conds["full"]
    latent = with_mask(conds["latent"]) if mask else conds["latent"]
    return comfy_nodes.common_ksampler(model, SEED, steps, 2.5, "euler", "normal", positive, negative, latent)[0][
        "samples"
    ]


_BASE: dict = {}


def unpatched(loaded, conds, case: Case, sampler) -> torch.Tensor:
    """The unpatched run with the case's steps and mask, computed once per module."""
    key = (sampler.__name__, case.steps, case.mask)
    if key not in _BASE:
        _BASE[key] = sampler(loaded[0], conds, steps=case.steps, mask=case.mask)
    return _BASE[key]


def patched(case: Case, loaded, conds, lora_dir):
    cls = node_class(case)
    inputs = {**schema_defaults(cls), **case.inputs, "model": loaded[0]}
    if case.node == "PerpNeg":
        inputs["empty_conditioning"] = [[torch.zeros(1, 77, 768), {}]]  # an empty text prompt, as CLIPTextEncode
    return run_node(cls, **inputs)


def differs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("case", [c for c in CASES if c.works], ids=lambda c: c.node)
def test_works(case, loaded, conds, lora_dir):
    model = patched(case, loaded, conds, lora_dir)
    out = animate(model, conds, steps=case.steps, mask=case.mask)
    assert torch.isfinite(out).all()
    assert differs(out, unpatched(loaded, conds, case, animate)) > 1e-4, f"{case.node} had no effect"
    assert differs(out, animate(model, conds, "no_reference", case.steps, case.mask)) > 1e-4, "reference ignored"
    assert differs(out, animate(model, conds, "no_motion", case.steps, case.mask)) > 1e-4, "motion ignored"


@pytest.mark.parametrize("case", [c for c in CASES if not c.works], ids=lambda c: c.node)
def test_refused_with_the_node_named(case, loaded, conds, lora_dir):
    model = patched(case, loaded, conds, lora_dir)
    name = "Context Windows" if case.node.startswith("ContextWindows") else case.node
    with pytest.raises(IncompatibleModelError, match=name):
        animate(model, conds)
    with pytest.raises(IncompatibleModelError, match=name):
        ksample(model, conds)


@pytest.mark.parametrize("node", ["SelfAttentionGuidance", "EasyCache"])
def test_one_window_only_nodes_are_refused_with_more_windows(node, loaded, conds, lora_dir):
    """SAG keeps one UNet call's attention map and EasyCache one call's output change: with two windows per step
    these belong to another window's frames, so Sample Animation refuses them before sampling."""
    case = next(c for c in CASES if c.node == node)
    model = patched(case, loaded, conds, lora_dir)
    positive, negative = conds["full"]
    with pytest.raises(IncompatibleModelError, match=f"{node} cannot run with 2 context windows per step"):
        XNeMoSampleAnimation.execute(
            model, positive, negative, conds["latent"], SEED, 1, 2.5, "euler", "normal", 1.0, 1, 0, True, "seeded"
        )


def test_perp_neg_guider_is_refused(loaded, conds):
    perpneg = importlib.import_module("comfy_extras.nodes_perpneg")
    positive, negative = conds["full"]
    empty = [[torch.zeros(1, 77, 768), {}]]
    guider = run_node(
        perpneg.PerpNegGuider,
        model=loaded[0],
        positive=positive,
        negative=negative,
        empty_conditioning=empty,
        cfg=2.5,
        neg_scale=1.0,
    )
    latent = conds["latent"]["samples"]
    sigmas = comfy.samplers.calculate_sigmas(loaded[0].get_model_object("model_sampling"), "normal", 1)
    with pytest.raises(IncompatibleModelError, match="PerpNegGuider"):
        guider.sample(torch.randn_like(latent), latent, comfy.samplers.sampler_object("euler"), sigmas, seed=SEED)


class _Block(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.transformer_blocks[0].attn1 = attn


class _UNet(torch.nn.Module):
    """Just what attn1_modules walks: the middle block holds one transformer block."""

    def __init__(self, attn):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList()
        self.middle_block = torch.nn.ModuleList([_Block(attn)])
        self.output_blocks = torch.nn.ModuleList()


@pytest.fixture
def replace_setup():
    from comfy.ldm.modules import attention

    torch.manual_seed(0)
    dim, tokens = 8, 5
    attn = attention.CrossAttention(dim, heads=2, dim_head=dim // 2, operations=torch.nn)
    key = ("middle", 0, 0)
    bank = reference.ReferenceBank({key: torch.randn(1, tokens, dim).half()}, (1, tokens))
    flags = torch.tensor([False, False, True, True])  # uncond rows first, as ComfyUI batches [1, 0]
    state = unet_patch.CallState(
        motion=torch.zeros(4, 32, 16), use_reference=flags, bank=bank, frames=2, unet=_UNet(attn)
    )
    extra = {PATCH_KEY: state, "block": key[:2], "block_index": 0, "cond_or_uncond": [1, 0], "n_heads": 2}
    n = torch.randn(4, tokens, dim)
    with torch.no_grad():
        q, k, v = attn.to_q(n), attn.to_k(n), attn.to_v(n)
        k_ref, v_ref = (f(bank.blocks[key].float()) for f in (attn.to_k, attn.to_v))
    return q, k, v, k_ref, v_ref, extra


def test_pag_identity_keeps_the_frames_own_values(replace_setup):
    """PAG's perturbed branch with a reference: "each token copies its own value", the reference not read there."""
    q, k, v, _, _, extra = replace_setup
    calls = []

    def perturbed_attention(q, k, v, extra_options, mask=None):  # what core PAG installs
        calls.append((k.shape[1], list(extra_options["cond_or_uncond"])))
        return v

    with torch.no_grad():
        out = core_patches.ReferenceReplace(perturbed_attention)(q, k, v, extra)
    assert torch.equal(out, v)
    assert calls == [(5, [1]), (10, [0])]  # the reading rows were offered [own ; reference], 10 keys


def test_softmax_replacement_reads_the_reference_on_reading_rows_only(replace_setup):
    """A replacement that computes attention (SAG's recording one) sees the reference keys on the conditional rows
    and the frame's own keys on the unconditional ones, whose attention map SAG reshapes to the latent."""
    from comfy.ldm.modules import attention

    q, k, v, k_ref, v_ref, extra = replace_setup
    maps = []

    def recording(q, k, v, extra_options):
        maps.append(k.shape[1])
        return attention.attention_basic(q, k, v, extra_options["n_heads"])

    with torch.no_grad():
        out = core_patches.ReferenceReplace(recording)(q, k, v, extra)
        want_uncond = attention.attention_basic(q[:2], k[:2], v[:2], 2)
        k2, v2 = (torch.cat([t[2:], r.expand(2, -1, -1)], 1) for t, r in ((k, k_ref), (v, v_ref)))
        want_cond = attention.attention_basic(q[2:], k2, v2, 2)
    assert maps == [5, 10]
    assert differs(out, torch.cat([want_uncond, want_cond])) < 1e-6


def test_hook_lora_keyframes(loaded, conds, lora_dir):
    """A hook LoRA (CreateHookLoraModelOnly) with keyframes (off for the first step, on for the second), set on the
    CFG pair with Cond Pair Set Props: applied per step as scheduled, reference and motion still act."""
    hooks_nodes = importlib.import_module("comfy_extras.nodes_hooks")
    hooks = hooks_nodes.CreateHookLoraModelOnly().create_hook_model_only("xnemo_test_lora.safetensors", 1.0)[0]
    off_then_on = hooks_nodes.CreateHookKeyframe().create_hook_keyframe(0.0, 0.0)[0]
    off_then_on = hooks_nodes.CreateHookKeyframe().create_hook_keyframe(1.0, 0.5, off_then_on)[0]
    keyed = hooks_nodes.SetHookKeyframes().set_hook_keyframes(hooks, off_then_on)[0]

    def hooked(hook_group):
        pair = hooks_nodes.PairConditioningSetProperties()
        out = {"latent": conds["latent"]}
        for variant in ("full", "no_reference", "no_motion"):
            positive, negative = conds[variant]
            out[variant] = pair.set_properties(positive, negative, 1.0, "default", hooks=hook_group)
        return out

    steps = 2
    always = animate(loaded[0], hooked(hooks), steps=steps)
    keyframed_conds = hooked(keyed)
    keyframed = animate(loaded[0], keyframed_conds, steps=steps)
    plain = animate(loaded[0], conds, steps=steps)
    assert torch.isfinite(keyframed).all()
    assert differs(keyframed, plain) > 1e-4, "the hook LoRA had no effect"
    assert differs(keyframed, always) > 1e-4, "the keyframes had no effect"
    assert differs(keyframed, animate(loaded[0], keyframed_conds, "no_reference", steps)) > 1e-4, "reference ignored"
    assert differs(keyframed, animate(loaded[0], keyframed_conds, "no_motion", steps)) > 1e-4, "motion ignored"


def test_temporal_attention_multiply_scales_only_spatial_attention_outputs(loaded):
    """UNetTemporalAttentionMultiply on an SD1.5 UNet: no SVD temporal blocks exist, so only its "structural"
    multipliers act, on the spatial attn1/attn2 outputs; X-NeMo's temporal sites are not UNet weights."""
    cls = importlib.import_module("comfy_extras.nodes_attention_multiply").UNetTemporalAttentionMultiply
    model = run_node(cls, model=loaded[0], self_structural=0.5, self_temporal=0.5, cross_structural=0.5,
                     cross_temporal=0.5)  # fmt: skip
    added = model.patches.keys() - loaded[0].patches.keys()
    assert added and all(".transformer_blocks." in k and ".to_out." in k for k in added)


def test_lazy_cache_is_not_taken_for_easy_cache(loaded):
    """Both live in nodes_easycache; only EasyCache (per UNet call) is window-bound, LazyCache caches whole steps."""
    module = importlib.import_module("comfy_extras.nodes_easycache")
    args = {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": False}
    lazy = run_node(module.LazyCacheNode, model=loaded[0], **args)
    easy = run_node(module.EasyCacheNode, model=loaded[0], **args)
    assert core_patches.refusals(lazy.model_options, True, windows=3, wrappers=lazy.wrappers) == []
    assert core_patches.refusals(easy.model_options, True, windows=1, wrappers=easy.wrappers) == []
    (message,) = core_patches.refusals(easy.model_options, True, windows=3, wrappers=easy.wrappers)
    assert message.startswith("EasyCache cannot run with 3 context windows per step")
