"""End-to-end parity with the official X-NeMo on each end-to-end set: ../shared/fixtures/xnemo_e2e (512-style square
output) and xnemo_e2e_portrait (96x128, non-square), or the folders in XNEMO_E2E_DIR. Pixels in, pixels out.

The set's CLIP image encoder and SVD VAE are regenerated from its recipe.py into the files users download
(e2e_weights.py), loaded by ComfyUI's loaders and the pack's nodes, and the chain runs node by node as a user wires it:
Load X-NeMo, Load CLIP Vision, X-NeMo Load VAE, X-NeMo Encode Motion (BlazeFace) on the set's driving clip, X-NeMo
Reference Condition on its portrait, X-NeMo Sample Animation with the official run's recorded noise, X-NeMo VAE Decode.
Every stage the manifest lists is compared with its golden within the manifest's own tolerance
(`golden.<name>.tolerance`); sizes, frame and step counts come from the manifest. Reference Condition runs in crop mode
`official` (the official square crop resized to the output), the mode that reproduces the official at any size.

Each stage is checked twice where it can be: fed the golden input of the stage (a failure points at that room), and
as part of the chain (upstream float noise included, compared with the manifest's end-to-end tolerances).
"""

from __future__ import annotations

import re

import comfy.clip_vision
import comfy.patcher_extension
import e2e_weights
import numpy as np
import pytest
import torch
from parity_utils import frames_first, max_abs

import nodes as comfy_nodes
from xnemo_pack.nodes.motion import XNeMoEncodeMotion
from xnemo_pack.nodes.reference import XNeMoReferenceCondition
from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.nodes.vae import XNeMoVAEDecode, XNeMoVAELoader
from xnemo_pack.xnemo_core.adapters import clip as clip_adapter
from xnemo_pack.xnemo_core.adapters import sampling
from xnemo_pack.xnemo_core.adapters import vae as vae_adapter
from xnemo_pack.xnemo_core.pipeline import reference_face_box
from xnemo_pack.xnemo_core.pure import face_crop
from xnemo_pack.xnemo_core.pure.constants import LATENT_SCALE
from xnemo_pack.xnemo_core.pure.errors import IncompatibleModelError

pytestmark = [pytest.mark.parity, pytest.mark.slow]

CLIP_MEAN = torch.tensor(clip_adapter.CLIP_MEAN).view(3, 1, 1)
CLIP_STD = torch.tensor(clip_adapter.CLIP_STD).view(3, 1, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Tolerances, read from the manifest


def atol(manifest: dict, name: str, decoder_alone: bool = False) -> float:
    """The manifest's suggested atol for golden `name` (5 x the official code's own thread-count noise); 0 = exact."""
    tol = manifest["golden"][name]["tolerance"]
    if tol == "exact":
        return 0.0
    if decoder_alone and "suggested_atol_decoder_alone" in tol:
        return float(tol["suggested_atol_decoder_alone"])
    return float(tol["suggested_atol"])


def check(manifest: dict, name: str, ours: torch.Tensor, golden: torch.Tensor, decoder_alone: bool = False) -> float:
    err = max_abs(ours, golden)
    limit = atol(manifest, name, decoder_alone)
    print(f"{name}{' (decoder alone)' if decoder_alone else ''}: max abs err {err:.3g} (tolerance {limit:.3g})")
    assert err <= limit, f"{name}: max abs err {err:.3g} > manifest tolerance {limit:.3g}"
    return err


def check_u8(manifest: dict, name: str, ours: torch.Tensor, golden: torch.Tensor) -> None:
    # "|diff| <= 1 on at most 0.10% of the values": the official truncates frames_float * 255, so a 1e-6 float
    # difference can flip a value by one level.
    rule = manifest["golden"][name]["tolerance"]["suggested"]
    levels, percent = re.search(r"<=\s*(\d+) on at most ([0-9.]+)%", rule).groups()
    diff = (ours.int() - golden.int()).abs()
    fraction = (diff > 0).float().mean().item()
    print(f"{name}: max |diff| {diff.max().item()}, {100 * fraction:.4f}% of values differ (rule: {rule})")
    assert diff.max().item() <= int(levels) and fraction <= float(percent) / 100


def clip_pixels(crop: torch.Tensor) -> torch.Tensor:
    """The official CLIP input picture of a 512 px crop (PIL bicubic 224) as IMAGE [1, 224, 224, 3]."""
    return torch.from_numpy(face_crop.clip_input_crop(crop.numpy()).copy()).float().div(255.0).unsqueeze(0)


def vae_pixels(crop: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The official VAE input picture (PIL Lanczos to the output size) as IMAGE [1, height, width, 3]."""
    return torch.from_numpy(face_crop.lanczos_resize(crop.numpy(), height, width)).float().div(255.0).unsqueeze(0)


def frames_u8(images: torch.Tensor) -> torch.Tensor:
    """IMAGE -> uint8 by truncation, as the official writer does ((frames * 255).astype(uint8))."""
    return (images * 255).to(torch.uint8)


@pytest.fixture(scope="module", autouse=True)
def inference_mode():
    """As ComfyUI runs every node (execution.py); without it autograd would keep each CLIP/VAE graph (GBs)."""
    with torch.inference_mode():
        yield


# ----------------------------------------------------------------------------------------------------------------------
# Loaded models (through the loaders users use)


@pytest.fixture(scope="module")
def xnemo(e2e_dir, e2e_manifest):
    """Load X-NeMo on the tiny official-format files the golden run used (checked by sha256 against the manifest)."""
    import hashlib

    import folder_paths

    from xnemo_pack.nodes import register_model_folder
    from xnemo_pack.nodes.loader import XNeMoLoader

    info = e2e_manifest["networks"]["xnemo_tiny"]
    folder = (e2e_dir / info["folder"].split()[0]).resolve()
    for name, digest in info["files_sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{folder / name} differs"
    register_model_folder()
    folder_paths.add_model_folder_path("x-nemo", str(folder))
    names = [f"xnemo_{n}.pth" for n in ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")]
    return XNeMoLoader.execute(*names, "fp32").args


def load_clip_vision(layout: str):
    return comfy_nodes.CLIPVisionLoader().load_clip(e2e_weights.CLIP_FILES[layout])[0]


@pytest.fixture(scope="module")
def clip_vision(e2e_models):
    """The official image encoder file, through core Load CLIP Vision."""
    return load_clip_vision("sd-image-variations")


@pytest.fixture(scope="module")
def vae(e2e_models):
    """The official VAE file as downloaded (diffusers), loaded by X-NeMo Load VAE."""
    return XNeMoVAELoader.execute(e2e_weights.VAE_DIFFUSERS).args[0]


def settings(manifest):
    return manifest["settings"]


# ----------------------------------------------------------------------------------------------------------------------
# Weights and loaders


def test_regenerated_weights_are_the_recipe(e2e_models, e2e_manifest):
    for net in ("clip", "vae"):
        assert e2e_models.digests[net] == e2e_manifest["networks"][net]["digest_sha256"]


def test_vae_files_build_comfyuis_temporal_decoder(vae, e2e_models):
    from comfy.ldm.modules.temporal_ae import VideoDecoder

    assert isinstance(vae.first_stage_model.decoder, VideoDecoder)
    assert vae_adapter.vae_kind(vae) == vae_adapter.TEMPORAL
    reference = vae.first_stage_model.state_dict()
    # Converter output through core Load VAE, and the checkpoint's VAE part as Image Only Checkpoint Loader builds it
    # (comfy.sd.VAE on `first_stage_model.*` with the prefix removed): the same network, the same weights.
    import comfy.sd
    import comfy.utils

    core = comfy_nodes.VAELoader().load_vae(e2e_weights.VAE_CONVERTED)[0]
    stage = comfy.utils.load_torch_file(str(e2e_models.root / "vae" / e2e_weights.VAE_FIRST_STAGE), safe_load=True)
    from_checkpoint = comfy.sd.VAE(
        sd=comfy.utils.state_dict_prefix_replace(stage, {"first_stage_model.": ""}, filter_keys=True)
    )
    via_loader = XNeMoVAELoader.execute(e2e_weights.VAE_FIRST_STAGE).args[0]
    for other in (core, from_checkpoint, via_loader):
        assert vae_adapter.vae_kind(other) == vae_adapter.TEMPORAL
        sd = other.first_stage_model.state_dict()
        assert sd.keys() == reference.keys()
        assert all(torch.equal(sd[k], reference[k]) for k in sd)


def test_core_load_vae_on_the_diffusers_file_is_refused(e2e_models):
    misread = comfy_nodes.VAELoader().load_vae(e2e_weights.VAE_DIFFUSERS)[0]
    with pytest.raises(IncompatibleModelError, match="diffusers Stable Video Diffusion file.*X-NeMo Load VAE"):
        vae_adapter.vae_kind(misread)


# ----------------------------------------------------------------------------------------------------------------------
# Stages fed their golden inputs


def test_clip_input(e2e_golden, e2e_manifest):
    pixels = clip_pixels(e2e_golden["pre.ref_crop_u8"])
    check(e2e_manifest, "pre.clip_input", comfy.clip_vision.clip_preprocess(pixels), e2e_golden["pre.clip_input"])


@pytest.mark.parametrize("layout", list(e2e_weights.CLIP_FILES))
def test_clip_embedding(layout, clip_vision, e2e_golden, e2e_manifest):
    if layout != "sd-image-variations":
        clip_vision = load_clip_vision(layout)  # loaded for this test only (0.6 GB)
    embed = clip_adapter.clip_image_embedding(clip_vision, e2e_golden["pre.ref_crop_u8"])
    check(e2e_manifest, "clip.image_embeds", embed.reshape(1, -1), e2e_golden["clip.image_embeds"])
    hidden = clip_vision.encode_image(clip_pixels(e2e_golden["pre.ref_crop_u8"]))["last_hidden_state"]
    check(e2e_manifest, "clip.last_hidden_state", hidden, e2e_golden["clip.last_hidden_state"])


def test_vae_input(e2e_golden, e2e_manifest):
    s = settings(e2e_manifest)
    pixels = vae_pixels(e2e_golden["pre.ref_crop_u8"], s["W"], s["H"])
    check(e2e_manifest, "pre.vae_input", (pixels * 2.0 - 1.0).movedim(-1, 1), e2e_golden["pre.vae_input"])


@pytest.mark.parametrize("mode", face_crop.REFERENCE_CROP_MODES)
def test_reference_crop_modes(mode, e2e_dir, e2e_golden, e2e_manifest):
    """Crop mode `official` cuts the official VAE input at the set's size; `widen` differs only off the square."""
    s = settings(e2e_manifest)
    image = portrait(e2e_dir, e2e_manifest)
    crop, info = face_crop.reference_crop(image[0], reference_face_box(image), s["H"], s["W"], mode=mode)
    ours = (crop.unsqueeze(0) * 2.0 - 1.0).movedim(-1, 1)
    if mode == "official" or s["W"] == s["H"]:
        check(e2e_manifest, "pre.vae_input", ours, e2e_golden["pre.vae_input"])
        x0, y0, x1, y1 = info.box
        assert x1 - x0 == y1 - y0  # the official square box, resized to width x height
    else:
        # The widened box has the output's aspect (within a pixel's rounding): another picture than the official's.
        x0, y0, x1, y1 = info.box
        assert abs((y1 - y0) * s["W"] - (x1 - x0) * s["H"]) <= max(s["W"], s["H"])
        assert max_abs(ours, e2e_golden["pre.vae_input"]) > 0.1


def test_reference_latent(vae, e2e_golden, e2e_manifest):
    s = settings(e2e_manifest)
    pixels = vae_pixels(e2e_golden["pre.ref_crop_u8"], s["W"], s["H"])
    check(e2e_manifest, "vae.latent_mean", vae.encode(pixels), e2e_golden["vae.latent_mean"])
    check(e2e_manifest, "vae.ref_latent", vae_adapter.encode_reference(vae, pixels), e2e_golden["vae.ref_latent"])


class DecodeRecorder:
    """Records the decoder's raw output (before ComfyUI's clamp to 0..1) while passing it through unchanged."""

    def __init__(self, vae):
        self.decode = vae.first_stage_model.decode
        self.outputs: list[torch.Tensor] = []

    def __call__(self, z, **kwargs):
        out = self.decode(z, **kwargs)
        # A copy: ComfyUI 0.30.0's process_output maps the decoder's output to 0..1 in place, so a reference to the
        # same float32 CPU tensor would record the mapped pixels, not the raw decoder output.
        self.outputs.append(out.detach().float().cpu().clone())
        return out


def decode_node(vae, latent: torch.Tensor, chunk: int, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    recorder = DecodeRecorder(vae)
    with monkeypatch.context() as m:
        m.setattr(vae.first_stage_model, "decode", recorder)
        images = XNeMoVAEDecode.execute({"samples": latent}, vae, chunk).args[0]
    return images, torch.cat(recorder.outputs)


def check_decode(manifest, golden, images, raw, decoder_alone: bool) -> None:
    check(manifest, "decode.vae_out", raw, golden["decode.vae_out"], decoder_alone)
    check(
        manifest,
        "decode.frames_float",
        images.movedim(-1, 1),
        frames_first(golden["decode.frames_float"]),
        decoder_alone,
    )
    check_u8(manifest, "decode.frames_u8", frames_u8(images), golden["decode.frames_u8"])


def test_decode_golden_latents(vae, e2e_golden, e2e_manifest, monkeypatch):
    images, raw = decode_node(
        vae, e2e_golden["decode.vae_in"], e2e_manifest["settings"]["decode"]["decode_chunk_size"], monkeypatch
    )
    check_decode(e2e_manifest, e2e_golden, images, raw, decoder_alone=True)


# ----------------------------------------------------------------------------------------------------------------------
# The whole chain


def driving_frames(e2e_dir, manifest) -> torch.Tensor:
    """The driving clip as Load Video + Get Video Components give it: IMAGE [F, H, W, 3] (frames checked by md5)."""
    import hashlib

    import av

    clip = manifest["inputs"]["driving_clip"]
    with av.open(str(e2e_dir / clip["file"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    assert [hashlib.md5(f.tobytes()).hexdigest() for f in frames] == clip["frame_md5"]
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def portrait(e2e_dir, manifest) -> torch.Tensor:
    """The reference portrait as Load Image gives it: IMAGE [1, H, W, 3] (file checked by sha256)."""
    import hashlib

    from PIL import Image

    path = (e2e_dir / manifest["inputs"]["ref_image"]["path"].split()[0]).resolve()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["inputs"]["ref_image"]["sha256"]
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).float().div(255.0).unsqueeze(0)


def as_u8(crops: torch.Tensor) -> torch.Tensor:
    """Motion-encoder input [N, 3, 224, 224] in [-1, 1] (2 * u8/255 - 1) back to the uint8 crops [N, 224, 224, 3]."""
    return ((crops.float() + 1) / 2 * 255).round().to(torch.uint8).movedim(1, -1)


@pytest.fixture(scope="module")
def chain(xnemo, clip_vision, vae, e2e_dir, e2e_golden, e2e_inputs, e2e_manifest):
    """Run the graph a user wires (Load Video -> Encode Motion, Load Image -> Reference Condition -> Sample Animation
    -> X-NeMo VAE Decode) on the set's media, recording every stage the manifest lists on the way (recorders pass
    values through unchanged)."""
    model, bundle = xnemo
    s = e2e_manifest["settings"]
    out: dict[str, torch.Tensor] = {}
    seen: dict[str, list] = {"faces": [], "square": [], "latent": [], "clip": []}
    mp = pytest.MonkeyPatch()

    def record(owner, name, key, keep=lambda args, result: result):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            seen[key].append(keep(args, result))
            return result

        mp.setattr(owner, name, wrapper)

    try:
        record(bundle, "encode_faces", "faces", lambda args, result: args[0])
        record(face_crop, "official_reference_crop", "square", lambda args, result: result.pixels)
        record(vae_adapter, "encode_reference", "latent", lambda args, result: (args[1], result))
        record(clip_adapter, "clip_image_embedding", "clip")
        motion, _ = XNeMoEncodeMotion.execute(
            bundle,
            driving_frames(e2e_dir, e2e_manifest),
            "blazeface",
            0,
            "largest",
            1.1,
            5.0,
            "interpolate",
            "official",
            float(s["fps"]),
        ).args
        positive, negative, start, crop, _ = XNeMoReferenceCondition.execute(
            bundle,
            portrait(e2e_dir, e2e_manifest),
            clip_vision,
            vae,
            motion,
            s["W"],
            s["H"],
            "blazeface",
            0,
            "largest",
            crop_mode="official",
        ).args
    finally:
        mp.undo()

    square = torch.from_numpy(seen["square"][-1].copy())
    pixels, ref_latent = seen["latent"][-1]
    out["pre.drv_bbox_raw"] = motion.boxes.to(torch.int64)
    out["pre.ref_bbox"] = torch.tensor(crop.face_box).to(torch.int64)
    out["pre.drv_me_input_u8"] = as_u8(seen["faces"][0])
    out["pre.ref_me_input_u8"] = as_u8(seen["faces"][-1])
    out["pre.ref_crop_u8"] = square
    out["pre.clip_input"] = comfy.clip_vision.clip_preprocess(clip_pixels(square))
    out["pre.vae_input"] = (pixels * 2.0 - 1.0).movedim(-1, 1)
    out["pre.mot_bbox_param"] = motion.f_rts
    out["motenc.drive_tokens"] = motion.tokens
    out["motenc.ref_tokens"] = negative[0][1]["model_conds"]["xnemo_motion"].cond[:1]
    out["clip.image_embeds"] = seen["clip"][-1].reshape(1, -1)
    out["clip.last_hidden_state"] = clip_vision.encode_image(clip_pixels(square))["last_hidden_state"]
    out["vae.latent_mean"] = vae.encode(pixels)
    out["vae.ref_latent"] = ref_latent
    out["sample.blurred_ref"] = start["samples"] * LATENT_SCALE

    # X-NeMo Sample Animation, with the official run's noise and a recorder of every step and UNet call.
    unet_rows: list[torch.Tensor] = []

    def record_unet(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        result = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        rows = result.float().cpu().reshape(len(transformer_options["cond_or_uncond"]), -1, *result.shape[1:])
        order = list(transformer_options["cond_or_uncond"])  # 0 = cond, 1 = uncond
        unet_rows.append(torch.stack([rows[order.index(1)], rows[order.index(0)]]))  # official order: uncond, cond
        return result

    recorded = model.clone()
    recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "e2e_record", record_unet)
    steps_seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_sample = sampling.sample_animation

    def sample_with_recorded_noise(*args, callback=None, **kwargs):
        def both(i, x0, x, total):
            steps_seen.append((x0.clone(), x.clone()))
            if callback is not None:
                callback(i, x0, x, total)

        return real_sample(*args, callback=both, noise=frames_first(e2e_inputs["noise"]), **kwargs)

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sampling, "sample_animation", sample_with_recorded_noise)
        latent = XNeMoSampleAnimation.execute(
            recorded,
            positive,
            negative,
            start,
            s["seed"],
            s["steps"],
            s["guidance_scale"],
            sampling.DEFAULT,
            sampling.DEFAULT,
            1.0,
            s["context_frames"],
            s["context_overlap"],
            True,
            "seeded",
        ).args[0]["samples"]
        images, raw = decode_node(vae, latent, s["decode"]["decode_chunk_size"], mp)
    finally:
        mp.undo()

    sigmas = model.get_model_object("model_sampling").sigmas
    timesteps = e2e_inputs["timesteps"].tolist()
    alpha_scale = [1 / (1 + sigmas[t] ** 2) ** 0.5 for t in timesteps]
    out["sample.init_latents"] = steps_seen[0][1] * alpha_scale[0]
    for step, rows in enumerate(unet_rows):
        out[f"sample.step{step}.unet_out"] = rows
        out[f"sample.step{step}.eps_cfg"] = rows[0] + s["guidance_scale"] * (rows[1] - rows[0])
        if step + 1 < len(timesteps):
            out[f"sample.step{step}.latents"] = steps_seen[step + 1][1] * alpha_scale[step + 1]
    out[f"sample.step{len(timesteps) - 1}.latents"] = latent * LATENT_SCALE
    out["sample.latents_final"] = latent * LATENT_SCALE
    out["decode.vae_in"] = latent
    out["decode.vae_out"] = raw
    out["decode.frames_float"] = images.movedim(-1, 1)
    out["decode.frames_u8"] = frames_u8(images)
    return out


def golden_layout(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The official [1, C, F, h, w] video tensors as frames-as-batch; unet_out [2, C, F, h, w] per row."""
    if tensor.ndim == 5 and name.endswith("unet_out"):
        return torch.stack([frames_first(tensor[i : i + 1]) for i in range(tensor.shape[0])])
    return frames_first(tensor) if tensor.ndim == 5 else tensor


STAGES = ("pre.", "clip.", "vae.", "motenc.", "sample.", "decode.")
# Inner geometry of the official crops: not outputs of any node here; tests/parity/test_preprocess_parity.py checks
# each of them against the official recording (issue 11). Their results (boxes, crops) are compared above.
INNER_GEOMETRY = {
    "pre.drv_det_score",
    "pre.drv_fix_length",
    "pre.drv_center_smoothed",
    "pre.drv_crop_box_int",
    "pre.ref_pose_box_int",
    "pre.ref_crop_box_padded",
}


def test_chain_covers_every_listed_stage(chain, e2e_manifest):
    missing = [n for n in e2e_manifest["golden"] if n.startswith(STAGES) and n not in chain and n not in INNER_GEOMETRY]
    assert not missing, f"stages not compared: {missing}"


@pytest.mark.parametrize("prefix", ["pre.", "clip.", "vae.", "motenc.", "sample.", "decode."])
def test_chain_stage(prefix, chain, e2e_golden, e2e_manifest):
    names = [n for n in e2e_manifest["golden"] if n.startswith(prefix) and n in chain]
    assert names
    for name in names:
        if name == "decode.frames_u8":
            check_u8(e2e_manifest, name, chain[name], e2e_golden[name])
        else:
            check(e2e_manifest, name, chain[name], golden_layout(name, e2e_golden[name]))
