"""Every bad number or dropdown value is refused when the prompt is queued, by ComfyUI's own checks where it has them.

ComfyUI runs its own min/max and dropdown checks on every input except those a node's `validate_inputs` names (and
on none when it takes **kwargs): execution.validate_inputs, 0.3.75. So the nodes name only the inputs they check
together (CROSS_CHECKS below) and their dropdowns (ComfyUI 0.3.75 compares only V1 list-typed dropdowns with their
options, not V3 `io.Combo` ones; nodes/checks.py checks those from the schema). For every number and dropdown input of
every node this test queues a value above its max, below its min or outside its options, with the node under an
output node and its links left out: `POST /prompt` must answer 400 with the error for that very input. Nothing runs.
"""

from __future__ import annotations

import inspect
import json

import pytest
from comfy_harness import PACK_PYTHON_MODULE

pytestmark = pytest.mark.server

CORE_ERRORS = {"above": "value_bigger_than_max", "below": "value_smaller_than_min", "option": "value_not_in_list"}
# Numbers a node checks itself, because they are only valid together (or need more than min/max).
CROSS_CHECKS = {
    "XNeMoSampleAnimation": {"steps", "denoise", "context_length", "context_overlap"},
    "XNeMoReferenceCondition": {"width", "height"},
    "XNeMoInterpolateMotion": {"keyframes"},
}


def _inputs(spec: dict) -> dict:
    return {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}


def _is_dropdown(entry) -> bool:
    return isinstance(entry[0], list) or entry[0] == "COMBO"


def _bad_values(spec: dict):
    """(case, input name, bad value) for every number and dropdown input of a node's /object_info entry."""
    for name, entry in _inputs(spec).items():
        options = entry[1] if len(entry) > 1 else {}
        if _is_dropdown(entry):
            yield "option", name, "not-an-option.xyz"
        elif entry[0] in ("INT", "FLOAT"):
            step = 1 if entry[0] == "INT" else 1.0
            if "max" in options:
                yield "above", name, options["max"] + step
            if "min" in options:
                yield "below", name, options["min"] - step


def _prompt(node_class: str, spec: dict, name: str, value) -> dict:
    """Node "1" with one widget value (its links left out), under an output node so that ComfyUI validates it."""
    node = {"class_type": node_class, "inputs": {name: value}}
    if spec.get("output_node"):
        return {"1": node}
    return {"1": node, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def test_validate_inputs_names_only_dropdowns_and_cross_checked_inputs(comfy_client):
    """No **kwargs, and no number left to the node that ComfyUI could check itself."""
    from comfy_api.internal import first_real_override

    from xnemo_pack.nodes import _all_nodes, register_model_folder

    register_model_folder()  # as comfy_entrypoint does before ComfyUI reads the schemas
    info = comfy_client.object_info()
    for cls in _all_nodes():
        node_id = cls.define_schema().node_id
        validate = first_real_override(cls, "validate_inputs")
        if validate is None:
            assert node_id not in CROSS_CHECKS, f"{node_id} has no validate_inputs; drop it from CROSS_CHECKS"
            continue
        spec = inspect.getfullargspec(validate)
        assert spec.varkw is None, f"{node_id}.validate_inputs takes **{spec.varkw}: ComfyUI then skips its own checks"
        dropdowns = {name for name, entry in _inputs(info[node_id]).items() if _is_dropdown(entry)}
        extra = set(spec.args[1:]) - dropdowns - CROSS_CHECKS.get(node_id, set())
        assert not extra, f"{node_id}.validate_inputs names {sorted(extra)}: ComfyUI would skip its checks for them"


def test_every_bad_number_or_option_is_refused_at_queue_time(comfy_client):
    info = comfy_client.object_info()
    ours = {name: spec for name, spec in info.items() if spec.get("python_module") == PACK_PYTHON_MODULE}
    assert ours, "no node of this pack in /object_info"
    assert "PreviewAny" in info
    checked, failures = set(), []
    for node_class, spec in sorted(ours.items()):
        for case, name, value in _bad_values(spec):
            status, body = comfy_client.post_json("/prompt", {"prompt": _prompt(node_class, spec, name, value)})
            checked.add((node_class, case))
            if status != 400:
                failures.append(f"{node_class}.{name}={value!r}: HTTP {status}, the prompt was accepted")
                continue
            errors = json.loads(body).get("node_errors", {}).get("1", {}).get("errors", [])
            found = [
                (e["type"], e.get("details", "")) for e in errors if e.get("extra_info", {}).get("input_name") == name
            ]
            if name in CROSS_CHECKS.get(node_class, set()):
                ok = any(
                    kind == "custom_validation_failed" and name in details.partition(" - ")[2]
                    for kind, details in found
                )
                want = "the node's own message"
            elif case == "option":
                # ComfyUI's own check where it has one for V3 dropdowns (after 0.3.75), else the node's message
                # naming the value (with the options, or for model files the folder they belong in).
                ok = any(
                    kind == CORE_ERRORS[case] or (kind == "custom_validation_failed" and str(value) in details)
                    for kind, details in found
                )
                want = f"{CORE_ERRORS[case]} or the node's message naming the value"
            else:
                ok = any(kind == CORE_ERRORS[case] for kind, _ in found)
                want = CORE_ERRORS[case]
            if not ok:
                failures.append(
                    f"{node_class}.{name}={value!r} ({case}): expected {want}, got {found or 'no error for this input'}"
                )
    assert not failures, "\n".join(failures)
    assert {("XNeMoSampleAnimation", "above"), ("XNeMoLoader", "option"), ("XNeMoPasteBack", "below")} <= checked


@pytest.mark.parametrize(
    "name, value, core_error",
    [
        ("cfg", 30.5, "value_bigger_than_max"),
        ("cfg", -0.5, "value_smaller_than_min"),
        ("seed", 2**64, "value_bigger_than_max"),
        ("seed", -1, "value_smaller_than_min"),
    ],
)
def test_cfg_and_seed_out_of_range_are_refused_by_comfyui(comfy_client, name, value, core_error):
    spec = comfy_client.object_info("XNeMoSampleAnimation")
    status, body = comfy_client.post_json("/prompt", {"prompt": _prompt("XNeMoSampleAnimation", spec, name, value)})
    assert status == 400
    errors = json.loads(body)["node_errors"]["1"]["errors"]
    assert any(e["type"] == core_error and e["extra_info"]["input_name"] == name for e in errors), errors
