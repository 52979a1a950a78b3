"""The portrait-animation subgraph blueprint (subgraphs/*.json, written by scripts/make_subgraph_blueprint.py) as the
server hands it to the frontend: listed at /global_subgraphs (ComfyUI 0.3.75 lists custom packs' subgraphs too, 0.30
also its own blueprints), its content served whole, and every node inside registered on this core with valid widget
values. The browser test loads it in the frontends (tests/browser/test_subgraph_blueprint_browser.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
BLUEPRINTS = sorted((ROOT / "subgraphs").glob("*.json"))
NAME = "X-NeMo Portrait Animation"


def test_blueprint_file_is_what_the_script_writes():
    """The blueprint is the main example workflow's chain: regenerate it when that workflow changes."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_subgraph_blueprint.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def listed(comfy_client) -> dict:
    return {k: v for k, v in comfy_client.get_json("/global_subgraphs").items() if v["source"] == "custom_node"}


def test_server_lists_the_packs_blueprints(listed):
    ours = {v["name"]: v for v in listed.values() if v["info"]["node_pack"] == "custom_nodes.xnemo"}
    assert sorted(ours) == sorted(p.stem for p in BLUEPRINTS) == [NAME]
    assert all("path" not in v and "data" not in v for v in ours.values())  # the listing holds names only


def test_blueprint_content_is_served_and_valid_on_this_core(comfy_client, listed):
    (entry_id,) = [k for k, v in listed.items() if v["name"] == NAME]
    served = comfy_client.get_json(f"/global_subgraphs/{entry_id}")
    assert served["data"] == (ROOT / "subgraphs" / f"{NAME}.json").read_text(encoding="utf-8")
    blueprint = json.loads(served["data"])
    (root,) = blueprint["nodes"]  # the frontend refuses a blueprint whose root is not one subgraph node
    (subgraph,) = blueprint["definitions"]["subgraphs"]
    assert root["type"] == subgraph["id"] and subgraph["category"] == "X-NeMo" and subgraph["description"]
    assert [(i["name"], i["type"]) for i in subgraph["inputs"][:3]] == [
        ("reference", "IMAGE"),
        ("video", "VIDEO"),
        ("motion_strength", "FLOAT"),
    ]
    assert [(o["name"], o["type"]) for o in subgraph["outputs"]] == [("VIDEO", "VIDEO")]

    info = comfy_client.object_info()
    for node in subgraph["nodes"]:
        assert node["type"] in info, f"{node['type']} is not registered on this core"
        spec = info[node["type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        widgets = [i["name"] for i in node["inputs"] if "widget" in i]
        assert set(widgets) <= set(declared), (node["type"], set(widgets) - set(declared))
        for name, value in zip(widgets, node.get("widgets_values") or []):
            kind = declared[name][0]
            if isinstance(kind, list) and not node["type"].endswith("Loader"):  # combos; file lists vary by machine
                assert value in kind, (node["type"], name, value)
    # Every link ends where it says, with the type of the socket it leaves.
    nodes = {n["id"]: n for n in subgraph["nodes"]}
    for link in subgraph["links"]:
        if link["target_id"] != -20:
            assert nodes[link["target_id"]]["inputs"][link["target_slot"]]["link"] == link["id"]
        if link["origin_id"] != -10:
            output = nodes[link["origin_id"]]["outputs"][link["origin_slot"]]
            assert link["id"] in output["links"] and output["type"] == link["type"]
