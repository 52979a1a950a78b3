"""The frontend extensions in web/js: syntax, and behaviour against a stand-in `app` under node (no browser)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xnemo_pack.xnemo_core.pure.motion_ops import EASINGS, ease
from xnemo_pack.xnemo_core.pure.windows import window_summary

ROOT = Path(__file__).resolve().parents[2]
JS_FILES = sorted((ROOT / "web" / "js").glob("*.js"))
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")

# A stand-in for ComfyUI's scripts/app.js and a minimal LiteGraph node, enough to run our hooks.
APP_STUB = "export const app = { extensions: [], registerExtension(ext) { this.extensions.push(ext); } };\n"
# scripts/api.js: fetchApi answers every query with argv[4] and records the URLs asked for.
API_STUB = (
    "export const api = { urls: [], async fetchApi(url) { this.urls.push(url); "
    "return { json: async () => JSON.parse(process.argv[4]) }; } };\n"
)
HARNESS = """
import { app } from "./scripts/app.js";
import { api } from "./scripts/api.js";
const mod = await import(process.argv[2]);
const [ext] = app.extensions;
const calls = [];
function makeType(widgets) {
  function Node() {}
  Node.prototype.onNodeCreated = function () { calls.push("original"); return "orig-result"; };
  Node.prototype.computeSize = function () { return [200, 100]; };
  Node.prototype.setSize = function (s) { this.size = s; };
  Node.prototype.addCustomWidget = function (w) { this.widgets.push(w); return w; };
  const make = () => {
    const n = new Node(); n.size = [100, 50]; n.widgets = widgets.map((w) => ({ ...w })); n.inputs = []; return n;
  };
  return { Node, make };
}
const out = { name: ext.name, other: null, nodes: {} };
const other = makeType([]);
await ext.beforeRegisterNodeDef(other.Node, { name: "KSampler" });
out.other = other.Node.prototype.onNodeCreated.toString().includes("original");
for (const [id, widgets] of Object.entries(JSON.parse(process.argv[3]))) {
  const t = makeType(widgets);
  await ext.beforeRegisterNodeDef(t.Node, { name: id });
  const node = t.make();
  const r = node.onNodeCreated();
  const added = node.widgets.slice(widgets.length);
  out.nodes[id] = { result: r, calls: calls.length, added: added.map((w) => ({ name: w.name, serialize: w.serialize,
    optSerialize: w.options?.serialize })) };
  const texts = [];
  const ctx = new Proxy({}, { get: (_, k) => (k === "fillText" ? (s) => texts.push(s) : () => {}), set: () => true });
  for (const w of added) w.draw(ctx, node, 300, 0, 20);
  if (node.onExecuted) {  // a run that reports its frame count (the official demo: 230 frames)
    node.onExecuted({ xnemo_frames: [230] });
    for (const w of added) w.draw(ctx, node, 300, 0, 20);
    await new Promise((r) => setTimeout(r, 0));  // the route's answer arrives
    for (const w of added) w.draw(ctx, node, 300, 0, 20);
  }
  out.nodes[id].texts = texts;
}
if (mod.EASINGS) {
  const ts = [0, 0.1, 0.37, 0.5, 0.8, 1];
  out.easings = Object.fromEntries(Object.entries(mod.EASINGS).map(([k, f]) => [k, ts.map(f)]));
}
out.urls = api.urls;
console.log(JSON.stringify(out));
"""

SAMPLER_WIDGETS = [
    {"name": "steps", "value": 35},
    {"name": "context_length", "value": 24},
    {"name": "context_overlap", "value": 4},
    {"name": "closed_loop", "value": True},
    {"name": "seed", "value": 7},
    {"name": "offset_mode", "value": "seeded"},
]
# The official demo: 230 frames, context 24 overlap 4, closed loop -> 12 windows/step x 35 steps = 420 passes.
WINDOWS_ANSWER = window_summary(230, 24, 4, True, 35, 7, "seeded")
NODES = {
    "XNeMoInterpolateMotion": [{"name": "frames", "value": 16}, {"name": "easing", "value": "ease_in_out"}],
    "XNeMoSampleAnimation": SAMPLER_WIDGETS,
}


@needs_node
@pytest.mark.parametrize("path", JS_FILES, ids=lambda p: p.name)
def test_js_syntax(path):
    run = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


@needs_node
@pytest.mark.parametrize("path", JS_FILES, ids=lambda p: p.name)
def test_extension_touches_only_our_nodes_and_wraps(tmp_path, path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP_STUB)
    (tmp_path / "scripts" / "api.js").write_text(API_STUB)
    target = tmp_path / "pack" / "web" / "js" / path.name  # so "../../../scripts/app.js" finds the stub
    target.parent.mkdir(parents=True)
    shutil.copy(path, target)
    (tmp_path / "harness.mjs").write_text(HARNESS)
    run = subprocess.run(
        [NODE, str(tmp_path / "harness.mjs"), target.as_uri(), json.dumps(NODES), json.dumps(WINDOWS_ANSWER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["name"].startswith("XNeMo.") and out["other"], "must leave other node types alone"
    touched = [nid for nid, n in out["nodes"].items() if n["added"]]
    assert len(touched) == 1, f"one feature per file, got {touched}"
    node = out["nodes"][touched[0]]
    assert node["result"] == "orig-result" and node["calls"] >= 1, (
        "original onNodeCreated must run and its result return"
    )
    for widget in node["added"]:
        assert widget["serialize"] is False and widget["optSerialize"] is False, widget
    assert node["texts"], "the widget draws something"
    if "easings" in out:  # the preview must draw the same curves the engine uses
        assert sorted(out["easings"]) == sorted(EASINGS)
        for name, values in out["easings"].items():
            expected = [ease(name, t) for t in (0, 0.1, 0.37, 0.5, 0.8, 1)]
            assert values == pytest.approx(expected, abs=1e-12), name
    if touched == ["XNeMoSampleAnimation"]:  # the readout asks the route once per setting and shows its answer
        assert out["urls"] == [
            "/xnemo/windows?frames=230&length=24&overlap=4&steps=35&closed_loop=true&seed=7&offset_mode=seeded"
        ]
        assert any("frames unknown" in t for t in node["texts"])
        assert "230 frames: 12 windows/step (closed loop)" in node["texts"]
        assert "35 steps = 420 UNet passes" in node["texts"]


@pytest.mark.parametrize("path", JS_FILES, ids=lambda p: p.name)
def test_extensions_never_read_the_app_graph(path):
    """Frontend 1.47.12 logs "ComfyApp graph accessed before initialization" on load by itself, and the browser tests
    ignore that exact message; so our extensions must never read `app.graph`/`app.rootGraph`, or an early read of
    ours would hide behind it. They reach the graph through the node they are given (`node.graph`)."""
    source = path.read_text(encoding="utf-8")
    assert not re.search(r"\bapp\s*\.\s*(graph|rootGraph)\b", source), path.name
