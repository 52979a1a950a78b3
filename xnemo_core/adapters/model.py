"""Build X-NeMo from its four files as ComfyUI models: the denoising MODEL and the XNEMO bundle.

- denoising UNet: an SD1.5-topology ComfyUI `BaseModel` (sizes read from the tensors), plus the 21 X-NeMo sites in
  their own ModelPatcher, attached by `unet_patch.apply_xnemo`;
- ReferenceNet: a second ComfyUI UNet without output head, run once per clip (see `reference`);
- motion encoder: `motion_encoder.MotionEncoder` in its own ModelPatcher.
All weights go through ComfyUI's model management (load, offload, cast); nothing is mutated after load.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.ops
import comfy.supported_models
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..pure import cpu_linear
from ..pure.errors import CheckpointError
from ..pure.layers import XNeMoSites, plain_weights
from ..pure.motion_encoder import MotionEncoder, own_leftovers
from . import checkpoint as ckpt
from .unet_patch import apply_xnemo, make_patcher

log = logging.getLogger("xnemo")

WEIGHT_DTYPES = ("auto", "fp16", "bf16", "fp32")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# "auto" prefers what the official release runs on the GPU (configs/prompts/animation.yaml: weight_dtype fp16), then
# bf16 where the device lacks fast fp16, then fp32 (CPU). ComfyUI decides what the device supports.
AUTO_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SITE_HEADS = 8  # official motion_module_kwargs / temporal_module_kwargs num_attention_heads


@dataclass(frozen=True, kw_only=True)
class XNeMoFiles:
    denoising_unet: str
    reference_unet: str
    motion_encoder: str
    temporal_module: str


@dataclass(frozen=True, kw_only=True)
class Precision:
    weight: torch.dtype
    manual_cast: torch.dtype | None

    @property
    def compute(self) -> torch.dtype:
        return self.manual_cast or self.weight

    def operations(self):
        return comfy.ops.manual_cast if self.manual_cast is not None else with_cpu_linear(comfy.ops.disable_weight_init)


@functools.cache
def with_cpu_linear(base):
    """ComfyUI's `base` operations whose Linear runs float32 CPU inference through oneDNN (`pure/cpu_linear`: the
    denoising step at the official size spends over half its time in linear layers). Anything ComfyUI does to a
    layer (weight casts, LoRA weight functions, offloading) keeps ComfyUI's own forward."""

    class Linear(base.Linear):
        def forward(self, *args, **kwargs):
            weights = plain_weights(self) if len(args) == 1 and not kwargs else None
            if weights is not None:
                comfy.ops.run_every_op()
                out = cpu_linear.linear(args[0], *weights)
                if out is not None:
                    return out
            return super().forward(*args, **kwargs)

    return type(f"XNeMo_{base.__name__}", (base,), {"Linear": Linear, "__doc__": with_cpu_linear.__doc__})


def pick_precision(weight_dtype: str, parameters: int) -> Precision:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    device = mm.get_torch_device()
    if weight_dtype == "auto":
        dtype = mm.unet_dtype(device=device, model_params=parameters, supported_dtypes=list(AUTO_DTYPES))
    else:
        dtype = _DTYPES[weight_dtype]
    return Precision(weight=dtype, manual_cast=mm.unet_manual_cast(dtype, device))


def _read(path: str, kind: str) -> dict[str, torch.Tensor]:
    sd = ckpt.load_state_dict_file(path)
    name = os.path.basename(path)
    ckpt.expect_kind(sd, kind, name)
    ckpt.check_float_dtypes(sd, name)
    return sd


# ---------------------------------------------------------------------------------------------------------------
# UNets
# ---------------------------------------------------------------------------------------------------------------

META = torch.device("meta")


def assign_weights(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load `sd` into `module` (built on the meta device) without a second copy of the weights.

    Each tensor is cast to the dtype the module declares for it (nothing is copied when the file already has it) and
    becomes the parameter itself (`assign=True`). With memory-mapped files, that keeps the load's peak near the
    weights' own size instead of file plus model (about 10 GB for the official fp32 files before).
    """
    declared = module.state_dict()
    cast = {k: v.to(declared[k].dtype) if k in declared and v.dtype != declared[k].dtype else v for k, v in sd.items()}
    # the keys were checked (and named) before
    module.load_state_dict(own_leftovers(cast, sd), strict=True, assign=True)


def build_denoising_model(unet_sd: dict, shape: ckpt.UNetShape, precision: Precision, name: str):
    """The plain SD UNet part as a ComfyUI BaseModel (EPS), weights checked key by key."""
    model_config = comfy.supported_models.SD15(shape.comfy_config())
    model_config.set_inference_dtype(precision.weight, precision.manual_cast)
    picked = comfy.ops.pick_operations(precision.weight, precision.manual_cast, model_config=model_config)
    if picked is comfy.ops.disable_weight_init:  # not manual cast, fp8 or cuBLAS ops, which ComfyUI keeps choosing
        model_config.custom_operations = with_cpu_linear(picked)
    model = model_config.get_model({}, "", device=META)
    expected = {k: v.shape for k, v in model.diffusion_model.state_dict().items()}
    assign_weights(model.diffusion_model, ckpt.convert_unet_keys(unet_sd, shape, name, expected))
    model.device = mm.unet_offload_device()
    return model.to(model.device)


def build_reference_unet(sd: dict, precision: Precision, name: str) -> UNetModel:
    """The ReferenceNet as a ComfyUI UNet. The official copy has no output head (conv_norm_out/conv_out removed):
    only its attn1 inputs are used, so the head is an identity here."""
    shape = ckpt.unet_shape(sd, name)
    config = shape.comfy_config()
    unet = UNetModel(**config, dtype=precision.weight, device=META, operations=precision.operations())
    unet.out = torch.nn.Identity()
    expected = {k: v.shape for k, v in unet.state_dict().items()}
    assign_weights(unet, ckpt.convert_unet_keys(sd, shape, name, expected))
    return unet.to(mm.unet_offload_device())


def sites_state_dict(site_sds: dict[str, dict], shape: ckpt.UNetShape, names: dict[str, str]):
    """Official `<block>.{motion,temporal}_modules.<i>.*` keys -> `sites.<k>.{motion,temporal}.*` and site widths."""
    prefixes = ckpt.site_prefixes(shape)
    out, channels = {}, []
    for kind, ours in (("motion_modules", "motion"), ("temporal_modules", "temporal")):
        remaining = dict(site_sds[kind])
        for k, prefix in enumerate(prefixes):
            head = prefix.format(kind=kind) + "."
            for key in [key for key in remaining if key.startswith(head)]:
                out[f"sites.{k}.{ours}.{key[len(head) :]}"] = remaining.pop(key)
        if remaining:
            raise CheckpointError(
                f"{names[kind]} has {len(remaining)} {kind} keys outside the {len(prefixes)} X-NeMo sites of this "
                f"UNet: {ckpt.listing(sorted(remaining))}. Use the four files of one X-NeMo release."
            )
    for k in range(len(prefixes)):
        w = out.get(f"sites.{k}.motion.temporal_transformer.proj_in.weight")
        if w is None:
            w = out.get(f"sites.{k}.temporal.temporal_transformer.proj_in.weight")
        if w is None:
            raise CheckpointError(
                f"X-NeMo site {prefixes[k].format(kind='*')} has no weights in "
                f"{names['motion_modules']} nor {names['temporal_modules']}."
            )
        channels.append(w.shape[0])
    return out, channels


def build_sites(site_sds: dict, shape: ckpt.UNetShape, precision: Precision, names: dict) -> XNeMoSites:
    sd, channels = sites_state_dict(site_sds, shape, names)
    token_key = "sites.0.motion.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_k.weight"
    pe_key = "sites.0.temporal.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    token_dim = sd[token_key].shape[1] if token_key in sd else 16
    max_frames = sd[pe_key].shape[1] if pe_key in sd else 32
    sites = XNeMoSites(
        channels,
        token_dim,
        SITE_HEADS,
        max_frames,
        dtype=precision.weight,
        device=META,
        operations=precision.operations(),
    )
    expected = {k: v.shape for k, v in sites.state_dict().items()}
    _check_site_keys(expected, sd, ckpt.site_prefixes(shape), names)
    assign_weights(sites, sd)
    return sites.to(mm.unet_offload_device())


def _check_site_keys(expected: dict, sd: dict, prefixes: list[str], names: dict[str, str]) -> None:
    """check_keys per file, in the official key names (`up_blocks.3.motion_modules.2.*`, not `sites.20.motion.*`)."""
    for kind, ours in (("motion_modules", "motion"), ("temporal_modules", "temporal")):

        def official(keys: dict, ours: str = ours, kind: str = kind) -> dict:
            out = {}
            for key, value in keys.items():
                _, index, part, rest = key.split(".", 3)
                if part == ours:
                    out[f"{prefixes[int(index)].format(kind=kind)}.{rest}"] = value
            return out

        ckpt.check_keys(official(expected), official(sd), names[kind])


# ---------------------------------------------------------------------------------------------------------------
# XNEMO bundle
# ---------------------------------------------------------------------------------------------------------------


class XNeMoBundle:
    """XNEMO: the ReferenceNet and the motion encoder, each in a ComfyUI ModelPatcher, plus what the nodes need."""

    def __init__(
        self, reference_unet: UNetModel, motion_encoder: MotionEncoder, precision: Precision, latent_channels: int
    ):
        self.reference = make_patcher(reference_unet)
        self.motion = make_patcher(motion_encoder)
        self.precision = precision
        self.latent_channels = latent_channels
        self._fusion = None

    def fusion_head(self) -> torch.nn.Module:
        """The motion encoder's fusion head (fp32, CPU), shared by the motion payloads made from this bundle."""
        if self._fusion is None:
            self._fusion = self.motion.model.fusion_head()
        return self._fusion

    @torch.no_grad()
    def encode_faces(
        self, crops: torch.Tensor, progress: Callable[[int, int], None] | None = None, batch: int | None = None
    ) -> torch.Tensor:
        """Raw 512-d face features [N, 512] (float32, CPU) of motion crops [N, 3, 224, 224] in [-1, 1].

        Frames go through in batches of `batch`: 16 on an accelerator, 4 on the CPU, where a batch of 4 frames kept
        the encoder's cache-sized work and took 0.96x the time of 8 per frame, with 0.6x the peak memory (about 340
        against 550 MiB at the official width)."""
        mm.load_models_gpu([self.motion])
        encoder = self.motion.model
        device = self.motion.load_device
        batch = batch or (4 if torch.device(device).type == "cpu" else 16)
        out = []
        for start in range(0, crops.shape[0], batch):
            chunk = crops[start : start + batch].to(device=device, dtype=self.precision.compute)
            out.append(encoder.encode_face(chunk).float().cpu())
            if progress is not None:
                progress(min(start + batch, crops.shape[0]), crops.shape[0])
        return torch.cat(out) if out else torch.zeros(0, 512)

    @torch.no_grad()
    def fuse(self, face_features: torch.Tensor, f_rts: torch.Tensor) -> torch.Tensor:
        """Motion tokens [N, 32, 16] from face features and box parameters (fp32, CPU: tiny)."""
        return self.fusion_head()(face_features.float(), f_rts.float())


def load_xnemo(files: XNeMoFiles, weight_dtype: str = "auto"):
    """Load the four official files -> (MODEL ModelPatcher, XNeMoBundle)."""
    names = {
        "denoising_unet": os.path.basename(files.denoising_unet),
        "reference_unet": os.path.basename(files.reference_unet),
        "motion_modules": os.path.basename(files.denoising_unet),
        "temporal_modules": os.path.basename(files.temporal_module),
    }
    denoising = _read(files.denoising_unet, "denoising_unet")
    temporal = _read(files.temporal_module, "temporal_module")
    base, sites = ckpt.split_sites(denoising)
    if sites["temporal_modules"]:
        raise CheckpointError(
            f"{names['denoising_unet']} already contains temporal layers; expected them only in "
            f"{names['temporal_modules']}."
        )
    _, temporal_sites = ckpt.split_sites(temporal)
    sites["temporal_modules"] = temporal_sites["temporal_modules"]

    shape = ckpt.unet_shape(base, names["denoising_unet"])
    parameters = sum(v.numel() for v in denoising.values()) + sum(v.numel() for v in temporal.values())
    precision = pick_precision(weight_dtype, parameters)

    unet = build_denoising_model(base, shape, precision, names["denoising_unet"])
    site_modules = build_sites(sites, shape, precision, names)
    del denoising, temporal, base, sites

    reference_sd = _read(files.reference_unet, "reference_unet")
    ref_shape = ckpt.unet_shape(reference_sd, names["reference_unet"])
    if (ref_shape.model_channels, ref_shape.channel_mult) != (shape.model_channels, shape.channel_mult):
        raise CheckpointError(
            f"{names['reference_unet']} (channels {ref_shape.model_channels} x {ref_shape.channel_mult}) does not "
            f"match {names['denoising_unet']} (channels {shape.model_channels} x {shape.channel_mult}): one file is "
            f"from a different (tiny vs full-size) set. Use the four files of one release."
        )
    reference = build_reference_unet(reference_sd, precision, names["reference_unet"])
    del reference_sd

    motion_sd = _read(files.motion_encoder, "motion_encoder")
    encoder = MotionEncoder.from_state_dict(motion_sd, dtype=precision.weight, operations=precision.operations())
    encoder.eval()

    model = apply_xnemo(make_patcher(unet), make_patcher(site_modules))
    log.info(
        "X-NeMo loaded: UNet %d channels x %s, %d sites, weights %s",
        shape.model_channels,
        list(shape.channel_mult),
        len(site_modules.sites),
        precision.weight,
    )
    return model, XNeMoBundle(reference, encoder, precision, shape.in_channels)
