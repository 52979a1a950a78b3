"""API graphs for the server tests: small graphs built from what `/object_info` says a node needs, and the X-NeMo
pipeline graph (Load -> Encode Motion -> Reference Condition -> Sample) with helpers that read its failures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import comfy_harness
import pytest

SIZE = 128  # px: tiny graphs keep every server test within seconds on two CPU cores

WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING"}


def combo_options(spec: list) -> list | None:
    """Options of a combo input spec (V1 `[[...], {...}]` or V3 `["COMBO", {"options": [...]}]`), else None."""
    if spec and isinstance(spec[0], list):
        return spec[0]
    if spec and spec[0] == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def fill_inputs(info: Mapping[str, Any], links: Mapping[str, list], overrides: Mapping[str, Any] | None = None) -> dict:
    """Inputs for one node: overrides first, then a link by input type, then the widget default / first option.

    `links` maps a type name (e.g. "IMAGE", "XNEMO") to `[node_id, output_index]`. Raises KeyError naming the input
    when a required one cannot be filled.
    """
    overrides = dict(overrides or {})
    inputs: dict[str, Any] = {}
    for name, spec in info["input"].get("required", {}).items():
        if name in overrides:
            inputs[name] = overrides.pop(name)
            continue
        options = combo_options(spec)
        kind = spec[0]
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if options is not None:
            if not options:
                raise KeyError(f"{info['name']}.{name}: combo has no options")
            inputs[name] = extra.get("default", options[0])
        elif kind in links:
            inputs[name] = links[kind]
        elif kind in WIDGET_TYPES:
            inputs[name] = extra.get("default", {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": ""}[kind])
        else:
            raise KeyError(f"{info['name']}.{name}: no link of type {kind} available")
    inputs.update(overrides)
    return inputs


def output_index(info: Mapping[str, Any], type_name: str) -> int | None:
    outputs = info.get("output", [])
    return outputs.index(type_name) if type_name in outputs else None


def pipeline(
    models: dict,
    pictures: dict,
    *,
    files: dict | None = None,
    frames: int = 2,
    drive: str | None = None,
    encode: dict | None = None,
    cond: dict | None = None,
    sample: dict | None = None,
    prefix: str = "",
    decode: bool = False,
) -> dict:
    """Load X-NeMo -> Encode Motion (the portrait repeated `frames` times) -> Reference Condition -> Sample -> output.

    `drive` names a node (in `prefix`-less ids of the returned graph) whose IMAGE output 0 replaces the driving frames.
    """
    p = prefix
    weights = dict(files or models["safetensors"])
    g = {
        f"{p}load": {"class_type": "XNeMoLoader", "inputs": {**weights, "weight_dtype": "fp32"}},
        f"{p}portrait": {"class_type": "LoadImage", "inputs": {"image": pictures["portrait"]}},
        f"{p}frames": {"class_type": "RepeatImageBatch", "inputs": {"image": [f"{p}portrait", 0], "amount": frames}},
        f"{p}encode": {
            "class_type": "XNeMoEncodeMotion",
            "inputs": {
                "xnemo": [f"{p}load", 1],
                "images": [drive or f"{p}frames", 0],
                "detector": "haar",
                "face_index": 0,
                "face_order": "largest",
                "crop_scale": 1.1,
                "smoothing_sigma": 5.0,
                "missing_face": "interpolate",
                "f_rts_mode": "official",
                **(encode or {}),
            },
        },
        f"{p}clip": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": models["clip_vision"]}},
        f"{p}vae": {"class_type": "VAELoader", "inputs": {"vae_name": models["vae"]}},
        f"{p}cond": {
            "class_type": "XNeMoReferenceCondition",
            "inputs": {
                "xnemo": [f"{p}load", 1],
                "image": [f"{p}portrait", 0],
                "clip_vision": [f"{p}clip", 0],
                "vae": [f"{p}vae", 0],
                "motion": [f"{p}encode", 0],
                "width": SIZE,
                "height": SIZE,
                "detector": "haar",
                "face_index": 0,
                "face_order": "largest",
                "motion_strength": 1.0,
                "head_strength": 1.0,
                **(cond or {}),
            },
        },
        f"{p}sample": {
            "class_type": "XNeMoSampleAnimation",
            "inputs": {
                "model": [f"{p}load", 0],
                "positive": [f"{p}cond", 0],
                "negative": [f"{p}cond", 1],
                "latent": [f"{p}cond", 2],
                "seed": 0,
                "steps": 1,
                "cfg": 2.5,
                "sampler_name": "xnemo_ddim",
                "scheduler": "xnemo_ddim",
                "denoise": 1.0,
                "context_length": 24,
                "context_overlap": 4,
                "closed_loop": True,
                "offset_mode": "seeded",
                **(sample or {}),
            },
        },
    }
    if decode:
        g[f"{p}decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{p}sample", 0], "vae": [f"{p}vae", 0]}}
        g[f"{p}out"] = {"class_type": "PreviewImage", "inputs": {"images": [f"{p}decode", 0]}}
    else:
        g[f"{p}out"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [f"{p}sample", 0], "filename_prefix": f"hardening/{p or 'run'}"},
        }
    return g


def execution_error(client, prompt: dict) -> dict:
    """Run a prompt that must fail; return its execution_error (node_type, exception_type, exception_message)."""
    with pytest.raises(comfy_harness.ExecutionFailed) as failure:
        client.run(prompt, timeout=300)
    errors = [data for kind, data in failure.value.entry["status"]["messages"] if kind == "execution_error"]
    assert errors, f"no execution_error in {failure.value.entry['status']}"
    error = errors[0]
    # Ours, not a torch/numpy/OpenCV error from deep inside: the exception is one of the pack's (or the node's
    # ValueError) and its message names what to do.
    assert error["exception_type"].rsplit(".", 1)[-1] in {
        "CheckpointError",
        "NoFaceError",
        "IncompatibleModelError",
        "XNeMoError",
        "ValueError",
    }, error
    return error


def rejection(client, prompt: dict) -> str:
    with pytest.raises(comfy_harness.PromptRejected) as rejected:
        client.queue_prompt(prompt)
    return str(rejected.value)


def grey_frames(batch: int) -> dict:
    """A node making `batch` blank grey frames of the test size (no face anywhere)."""
    return {
        "class_type": "EmptyImage",
        "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch, "color": 0x808080},
    }
