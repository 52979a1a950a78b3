"""Build small API graphs from what `/object_info` says a node needs (server tests only)."""

from __future__ import annotations

from typing import Any, Mapping

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
