"""Convert UI-format workflows (what the ComfyUI frontend saves) into API-format prompts (what `POST /prompt` takes).

    .venv/bin/python scripts/workflow_to_api.py            # example_workflows/*.json -> example_workflows/api/
    .venv/bin/python scripts/workflow_to_api.py --check    # fail if a committed API twin is out of date
    .venv/bin/python scripts/workflow_to_api.py --url http://127.0.0.1:8188 my_workflow.json -o out/

The node definitions come from a server's `/object_info` (`--url`, or a temporary server with this pack started
through `comfy_harness`). `widgets_values` is positional: it holds one value per widget input, in the node's input
order (required, then optional), plus UI-only extras that this converter skips: `control_after_generate` after a seed
and the upload button of image/video/audio loaders. Links become `[source node id, output slot]`; frontend-only nodes
(Note, MarkdownNote) are dropped, Reroutes are followed and muted nodes left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_workflows"
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MODE_MUTED, MODE_BYPASSED = 2, 4


class ConversionError(ValueError):
    """The workflow cannot be expressed as an API prompt with these node definitions."""


DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # ComfyUI >= 0.4 (e.g. SaveVideo's codec): a combo whose option adds inputs


def _is_widget(spec: list) -> bool:
    return bool(spec) and (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES or spec[0] == DYNAMIC_COMBO)


def _ordered_inputs(info: Mapping[str, Any]) -> list[tuple[str, list]]:
    """(name, spec) for required then optional inputs, in the server's `input_order` when it gives one."""
    out = []
    for group in ("required", "optional"):
        specs = info.get("input", {}).get(group, {})
        order = info.get("input_order", {}).get(group) or list(specs)
        out += [(name, specs[name]) for name in order if name in specs]
    return out


def _widget_values(node: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """Map a node's positional `widgets_values` to input names, skipping the frontend's UI-only extras.

    A dynamic combo's value is followed by the widgets of the option it selects, named `<combo>.<input>` in the
    prompt (as ComfyUI 0.30.0's frontend saves and exports SaveVideo's `codec` and `codec.encoding`)."""
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # some packs (e.g. VideoHelperSuite) save a name -> value dict
        return dict(values)
    out: dict[str, Any] = {}
    i = 0

    def walk(inputs: list[tuple[str, list]], prefix: str) -> bool:
        nonlocal i
        for name, spec in inputs:
            if not _is_widget(spec):
                continue
            if i >= len(values):
                return False
            out[prefix + name] = values[i]
            i += 1
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            seed_like = options.get("control_after_generate") or name in ("seed", "noise_seed")
            if seed_like and i < len(values) and values[i] in CONTROL_VALUES:
                i += 1  # control_after_generate
            if (
                any(options.get(flag) for flag in UPLOAD_FLAGS)
                and i < len(values)
                and values[i] in ("image", "video", "audio")
            ):
                i += 1  # the upload button's value
            if spec[0] == DYNAMIC_COMBO:
                chosen = next((o for o in options.get("options", []) if o.get("key") == out[prefix + name]), None)
                if chosen is not None and not walk(_ordered_inputs({"input": chosen["inputs"]}), f"{prefix}{name}."):
                    return False
        return True

    walk(_ordered_inputs(info), "")
    return out


def convert(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, dict]:
    """The API prompt for a UI workflow: {node id: {class_type, inputs, _meta: {title}}}."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ConversionError("workflows with subgraphs are not supported; unpack them in the frontend first")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}  # id, from node, from slot, to node, to slot, type

    def source(link_id: int) -> tuple[Any, int] | None:
        seen = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            _, from_id, from_slot, *_ = links[link_id]
            origin = nodes[from_id]
            if origin["type"] == "Reroute":
                link_id = (origin.get("inputs") or [{}])[0].get("link")
                continue
            if origin.get("mode") == MODE_MUTED:
                return None
            return from_id, from_slot
        return None

    prompt: dict[str, dict] = {}
    for node_id, node in sorted(nodes.items(), key=lambda item: item[0]):
        kind = node["type"]
        if kind in FRONTEND_ONLY or kind == "Reroute" or node.get("mode") == MODE_MUTED:
            continue
        if node.get("mode") == MODE_BYPASSED:
            raise ConversionError(f"node {node_id} ({kind}) is bypassed; bypassed nodes are not supported")
        info = object_info.get(kind)
        if info is None:
            raise ConversionError(f"node {node_id}: type {kind!r} is not in /object_info (missing custom node?)")
        inputs: dict[str, Any] = _widget_values(node, info)
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            origin = source(slot["link"])
            if origin is None:
                inputs.pop(slot["name"], None)
                continue
            inputs[slot["name"]] = [str(origin[0]), origin[1]]
        inputs = {
            key: inputs[key]
            for name, _ in _ordered_inputs(info)
            for key in [name, *(k for k in inputs if k.startswith(name + "."))]
            if key in inputs
        }
        prompt[str(node_id)] = {
            "inputs": inputs,
            "class_type": kind,
            "_meta": {"title": node.get("title") or info.get("display_name") or kind},
        }
    return prompt


def dumps(prompt: Mapping[str, Any]) -> str:
    return json.dumps(prompt, indent=2, ensure_ascii=False) + "\n"


def api_path(ui_path: Path, out_dir: Path | None = None) -> Path:
    return (out_dir or ui_path.parent / "api") / ui_path.name


def _object_info(url: str | None) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import comfy_harness

    if url:
        return comfy_harness.ComfyClient(url).object_info()
    with tempfile.TemporaryDirectory(prefix="xnemo-object-info-") as work:
        with comfy_harness.start_server(Path(work)) as server:
            return server.client().object_info()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="UI workflows (default: example_workflows/*.json)")
    parser.add_argument("-o", "--out-dir", type=Path, help="where API files go (default: <workflow dir>/api/)")
    parser.add_argument("--url", help="a running ComfyUI to read /object_info from (default: start one with the pack)")
    parser.add_argument("--object-info", type=Path, help="a saved /object_info JSON instead of a server")
    parser.add_argument("--check", action="store_true", help="only compare with the existing API files")
    args = parser.parse_args(argv)

    workflows = args.workflows or sorted(EXAMPLES.glob("*.json"))
    info = json.loads(args.object_info.read_text()) if args.object_info else _object_info(args.url)
    stale = []
    for path in workflows:
        target = api_path(path, args.out_dir)
        text = dumps(convert(json.loads(path.read_text(encoding="utf-8")), info))
        if args.check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"{path} -> {target}")
    if stale:
        print("out of date (run scripts/workflow_to_api.py): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
