"""Write subgraphs/X-NeMo Portrait Animation.json: the main example workflow's chain as one reusable subgraph.

ComfyUI (0.3.75 and 0.30) lists every custom node pack's `subgraphs/*.json` at `/global_subgraphs`, and the frontend
shows each as a node under "Subgraph Blueprints" in the node library. The file is a workflow whose root graph is a
single node of the subgraph type defined in `definitions.subgraphs` (the frontend refuses any other root).

The chain is taken from example_workflows/xnemo_portrait_animation.json (so both stay the same graph): the loaders,
Encode Motion, Reference Condition, Sample Animation, VAE Decode, Paste Back, Get Video Components and Create Video.
Left out: Load Image, Load Video, Save Video, the preview and the note. In: the reference picture, the driving video,
motion strength and the six model file names; out: the video (driving fps and audio).

    .venv/bin/python scripts/make_subgraph_blueprint.py          # rewrite the file
    .venv/bin/python scripts/make_subgraph_blueprint.py --check  # exit 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "example_workflows" / "xnemo_portrait_animation.json"
NAME = "X-NeMo Portrait Animation"
TARGET = ROOT / "subgraphs" / f"{NAME}.json"
CATEGORY = "X-NeMo"
DESCRIPTION = (
    "Animates a portrait with the face motion of a driving video (X-NeMo, official settings): face tracking and "
    "official crops, motion tokens, reference conditioning, windowed sampling, the SVD VAE's chunked decode, paste "
    "back into the full portrait; the video keeps the driving fps and audio. Needs the four X-NeMo files, CLIP "
    "ViT-L/14 vision and the SVD VAE (README, 'Where the weights go')."
)
DROPPED = {"LoadImage", "LoadVideo", "SaveVideo", "PreviewImage", "Note"}
SUBGRAPH_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "xnemo-comfyui/subgraphs/portrait-animation"))  # stable across runs
# Widgets shown on the subgraph node: (node type, widget name).
PROMOTED = [
    ("XNeMoReferenceCondition", "motion_strength"),
    ("XNeMoLoader", "denoising_unet"),
    ("XNeMoLoader", "reference_unet"),
    ("XNeMoLoader", "motion_encoder"),
    ("XNeMoLoader", "temporal_module"),
    ("CLIPVisionLoader", "clip_name"),
    ("XNeMoVAELoader", "vae_name"),
]


def _input_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"xnemo-comfyui/subgraphs/portrait-animation/{name}"))


def build() -> dict:
    workflow = json.loads(SOURCE.read_text(encoding="utf-8"))
    by_id = {n["id"]: n for n in workflow["nodes"]}
    keep = {i: n for i, n in by_id.items() if n["type"] not in DROPPED}
    by_type = {n["type"]: n for n in keep.values()}
    links = {link[0]: link for link in workflow["links"]}  # [id, origin, slot, target, slot, type]

    def source_of(node_type: str, slot_type: str) -> list:
        return [lk for lk in links.values() if by_id[lk[1]]["type"] == node_type and lk[5] == slot_type]

    # Links into the dropped nodes' places: the picture, the video, and the video going out.
    picture = source_of("LoadImage", "IMAGE")
    video = source_of("LoadVideo", "VIDEO")
    result = [lk for lk in links.values() if by_id[lk[3]]["type"] == "SaveVideo"]
    assert len(video) == 1 and len(result) == 1 and picture, "the example workflow changed shape"

    sub_links, inputs, outputs = [], [], []
    for lk in links.values():
        if lk[1] in keep and lk[3] in keep:
            sub_links.append(dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), lk)))

    def add_input(name: str, kind: str, targets: list[tuple[int, int, int]], label: str | None = None) -> None:
        slot = len(inputs)
        entry = {"id": _input_id(name), "name": name, "type": kind, "linkIds": [], "pos": [0, 20 * slot]}
        if label:
            entry["label"] = label
        for link_id, node_id, target_slot in targets:
            entry["linkIds"].append(link_id)
            sub_links.append(
                {
                    "id": link_id,
                    "origin_id": -10,
                    "origin_slot": slot,
                    "target_id": node_id,
                    "target_slot": target_slot,
                    "type": kind,
                }
            )
            keep[node_id]["inputs"][target_slot]["link"] = link_id
        inputs.append(entry)

    add_input("reference", "IMAGE", [(lk[0], lk[3], lk[4]) for lk in picture], label="reference image")
    add_input("video", "VIDEO", [(video[0][0], video[0][3], video[0][4])], label="driving video")
    next_link = max(links) + 1
    proxy = []
    for node_type, widget in PROMOTED:
        node = by_type[node_type]
        slot = next(k for k, i in enumerate(node["inputs"]) if i["name"] == widget)
        kind = node["inputs"][slot]["type"]
        add_input(widget, kind, [(next_link, node["id"], slot)])
        proxy.append([str(node["id"]), widget])
        next_link += 1

    (out_link,) = result
    outputs.append(
        {"id": _input_id("VIDEO"), "name": "VIDEO", "type": "VIDEO", "linkIds": [out_link[0]], "pos": [0, 0]}
    )
    sub_links.append(
        {
            "id": out_link[0],
            "origin_id": out_link[1],
            "origin_slot": out_link[2],
            "target_id": -20,
            "target_slot": 0,
            "type": "VIDEO",
        }
    )
    for node in keep.values():  # outputs that fed the dropped nodes now end inside the subgraph
        for output in node.get("outputs", []):
            if output.get("links"):
                output["links"] = [i for i in output["links"] if i in {lk["id"] for lk in sub_links}] or None
    nodes = sorted(keep.values(), key=lambda n: n["id"])
    xs = [n["pos"][0] for n in nodes]
    ys = [n["pos"][1] for n in nodes]
    left, right, top = min(xs) - 240, max(xs) + 400, min(ys)
    for k, entry in enumerate(inputs):
        entry["pos"] = [left + 100, top + 20 + 20 * k]
    outputs[0]["pos"] = [right + 20, top + 20]

    subgraph = {
        "id": SUBGRAPH_ID,
        "version": 1,
        "state": {
            "lastGroupId": 0,
            "lastNodeId": max(keep),
            "lastLinkId": max(lk["id"] for lk in sub_links),
            "lastRerouteId": 0,
        },
        "revision": 0,
        "config": {},
        "name": NAME,
        "inputNode": {"id": -10, "bounding": [left, top, 120, 20 + 20 * len(inputs)]},
        "outputNode": {"id": -20, "bounding": [right, top, 120, 40]},
        "inputs": inputs,
        "outputs": outputs,
        "widgets": [],
        "nodes": nodes,
        "groups": [],
        "links": sorted(sub_links, key=lambda lk: lk["id"]),
        "extra": {},
        "category": CATEGORY,
        "description": DESCRIPTION,
    }
    instance_inputs = []
    for entry in inputs:
        socket = {"name": entry["name"], "type": entry["type"], "link": None}
        if entry.get("label"):
            socket["label"] = entry["label"]
        if entry["type"] not in ("IMAGE", "VIDEO"):
            socket["widget"] = {"name": entry["name"]}
        instance_inputs.append(socket)
    instance = {
        "id": 1,
        "type": SUBGRAPH_ID,
        "pos": [0, 0],
        "size": [320, 300],
        "flags": {},
        "order": 0,
        "mode": 0,
        "inputs": instance_inputs,
        "outputs": [{"name": "VIDEO", "type": "VIDEO", "links": []}],
        "properties": {"proxyWidgets": proxy},
        "widgets_values": [],
        "title": NAME,
    }
    return {
        "revision": 0,
        "last_node_id": 1,
        "last_link_id": 0,
        "nodes": [instance],
        "links": [],
        "version": 0.4,
        "definitions": {"subgraphs": [subgraph]},
        "extra": {},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is not what this writes")
    args = parser.parse_args()
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if args.check:
        same = TARGET.is_file() and TARGET.read_text(encoding="utf-8") == text
        state = "up to date" if same else "differs: run scripts/make_subgraph_blueprint.py"
        print(f"{TARGET.relative_to(ROOT)}: {state}")
        return 0 if same else 1
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
