"""Each example workflow in the real ComfyUI frontend, in Debian's headless chromium against a test server.

Runs against two frontends (the one ComfyUI 0.3.75 pins and the newest on PyPI, see conftest.py): the newest in the
classic canvas and in the Vue node rendering mode, the pinned one in the classic canvas. Asserts per workflow: every
node type is registered and the frontend flags none as missing, the page logs no console errors, our JS extensions
are registered, our display widgets exist, are drawn and visibly change the screenshot, the frontend's own
serialization gives back the file's widgets_values, and its "Export (API)" equals our committed API twin.
Screenshots go to test-artifacts/browser/<frontend>-<version>-<mode>/ (with XNEMO_UPDATE_DOCS_SCREENSHOT=1 the main
workflow's pinned classic one also to docs/images/, shown in the README).

Ignored console errors, each unrelated to this pack:
- "Failed to load resource" for requests this test aborts (anything not on the 127.0.0.1 test server: tests never
  reach the network; the frontend asks api.comfy.org about releases and nodes) and for the 404s of a fresh user
  folder (user.css, favicon, userdata listings, comfy.templates.json);
- the frontend's own startup "TypeError: Cannot read properties of undefined (reading 'id') at onChange": frontend
  1.32.9 raises it on a fresh profile with no custom nodes at all (checked with --disable-all-custom-nodes);
- newer frontends read the queue and history from `/api/jobs`, a route ComfyUI 0.3.75 does not have: its 404s and
  the "JobsApiError: Failed to fetch jobs: 404" the frontend logs about them (checked with --disable-all-custom-nodes);
- frontend 1.47.12 (the one ComfyUI 0.30.0 pins) logs "ComfyApp graph accessed before initialization" on page load:
  its own linear-mode store reads `app.rootGraph` in a watcher before the graph exists (the stack is all frontend
  code; checked with --disable-all-custom-nodes). Our extensions never read `app.graph`/`app.rootGraph` (asserted).

Workflows are saved by the newest core (0.30.0): core CreateVideo's `bit_depth` and SaveVideo's `codec.encoding`
(new in 0.30.0) are in their widgets_values. On the 0.3.75 floor the frontend keeps the values of the widgets that
core defines (the trailing ones are dropped, nothing shifts), and Export (API) equals the twin on the inputs that core
defines.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import workflow_to_api

pytestmark = [pytest.mark.browser, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example_workflows"
WORKFLOWS = sorted(p.stem for p in EXAMPLES.glob("*.json"))
MAIN_WORKFLOW = "xnemo_portrait_animation"
DOCS_IMAGE = ROOT / "docs" / "images" / "portrait_animation_workflow.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
FRESH_PROFILE_404 = re.compile(r"/(user\.css|favicon\.ico|api/userdata\b.*)$")
JOBS_API_404 = re.compile(r"/api/jobs\?")
FRONTEND_STARTUP_BUG = "TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange"
JOBS_API_ERROR = "JobsApiError: Failed to fetch jobs: 404"
FRONTEND_EARLY_GRAPH_READ = "ComfyApp graph accessed before initialization"  # frontend 1.47.12's own, see above
OUR_WIDGETS = {"XNeMoInterpolateMotion": "easing_preview", "XNeMoSampleAnimation": "window_readout"}
EXTENSIONS = sorted(
    set(re.findall(r'name:\s*"(XNeMo\.[A-Za-z]+)"', "".join(p.read_text() for p in (ROOT / "web" / "js").glob("*.js"))))
)
MODES = {"classic": False, "vue": True}  # value of the setting Comfy.VueNodes.Enabled
ALL_RUNS = [("pinned", "classic"), ("newest", "classic"), ("newest", "vue")]  # (frontend, node rendering mode)
# XNEMO_BROWSER_FRONTENDS=pinned runs the pinned frontend only (CI's floor lane: the newest frontend runs on 0.30.0)
FRONTENDS = os.environ.get("XNEMO_BROWSER_FRONTENDS", "pinned,newest").split(",")
RUNS = [run for run in ALL_RUNS if run[0] in FRONTENDS]
MIN_CHANGED_PIXELS = 10  # pixels our widget's drawing must change in its own screen area (small text when zoomed out)

READY = "() => window.app?.graph && window.LiteGraph?.registered_node_types?.['XNeMoLoader'] && app.extensions.length"
FIT_VIEW = """() => {
  let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
  for (const n of app.graph._nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const el = app.canvas.canvas, cw = el.clientWidth, ch = el.clientHeight, top = 100, side = 30;
  const scale = Math.min((cw - 2 * side) / (x1 - x0), (ch - top - side) / (y1 - y0));
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [(cw / scale - (x1 - x0)) / 2 - x0, top / scale - y0];
  app.canvas.setDirty(true, true);
}"""
# Wrap our widgets' draw(): count calls, record where on the page the widget drew (from the context's transform, so
# it works for the main canvas and for the per-widget canvas of Vue nodes), and skip the drawing while
# window.__xnemoHide is set. Then redraw both ways.
INSTRUMENT = """(wanted) => {
  const out = {};
  window.__xnemoHide = false;
  for (const node of app.graph._nodes) {
    const name = wanted[node.type];
    if (!name) continue;
    const widget = node.widgets?.find((w) => w.name === name);
    const entry = { type: node.type, found: !!widget, serialize: widget?.serialize,
                    optionsSerialize: widget?.options?.serialize, draws: 0, rect: null };
    if (widget) {
      const draw = widget.__xnemoDraw ?? widget.draw;
      widget.__xnemoDraw = draw;
      widget.draw = function (ctx, drawNode, width, y, height) {
        entry.draws += 1;
        const m = ctx.getTransform(), el = ctx.canvas, r = el.getBoundingClientRect();
        const sx = r.width / el.width, sy = r.height / el.height;
        const h = this.computeSize ? this.computeSize(width)[1] : height;
        entry.rect = { x: r.left + m.e * sx, y: r.top + (m.f + m.d * y) * sy, width: m.a * width * sx,
                       height: m.d * h * sy };
        if (!window.__xnemoHide) return draw.apply(this, arguments);
      };
    }
    out[node.id] = entry;
  }
  window.__xnemoDraws = out;
}"""
REDRAW = """(hide) => {
  window.__xnemoHide = hide;
  for (const node of app.graph._nodes) for (const w of node.widgets ?? []) if (w.__xnemoDraw) w.triggerDraw?.();
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
}"""


def _console_filter(local: str, aborted: set[str]):
    def wanted(text: str, url: str) -> bool:
        ignored_url = (
            url in aborted or not url.startswith(local) or FRESH_PROFILE_404.search(url) or JOBS_API_404.search(url)
        )
        if text.startswith("Failed to load resource") and ignored_url:
            return False
        return not (
            text.startswith(FRONTEND_STARTUP_BUG) or JOBS_API_ERROR in text or text == FRONTEND_EARLY_GRAPH_READ
        )

    return wanted


@pytest.fixture(scope="module", params=RUNS, ids=["-".join(run) for run in RUNS])
def page(request, frontend_server):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (scripts/setup.sh does, as root)")
    frontend_name, mode = request.param
    server = frontend_server(frontend_name)
    client = server.client()
    # No tutorial, no missing-models probe; the node rendering mode under test.
    status, body = client.post_json(
        "/settings",
        {
            "Comfy.TutorialCompleted": True,
            "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.VueNodes.Enabled": MODES[mode],
        },
    )
    assert status == 200, body

    errors: list[str] = []
    aborted: set[str] = set()
    local = server.url
    wanted = _console_filter(local, aborted)

    def on_route(route):
        if route.request.url.startswith(local):
            route.continue_()
        else:
            aborted.add(route.request.url)
            route.abort()

    def on_console(message):
        if message.type == "error" and wanted(message.text, (message.location or {}).get("url", "")):
            errors.append(message.text)

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1920, "height": 1080})
            pg.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            pg.route("**/*", on_route)
            pg.on("console", on_console)
            pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            pg.goto(local)
            pg.wait_for_function(READY, timeout=120_000)
            pg.wait_for_timeout(1000)  # let the extensions' setup and the first draw settle
            pg.console_errors = errors
            pg.label = f"{frontend_name}-{server.frontend.version}-{mode}"
            pg.frontend, pg.mode = server.frontend, mode
            pg.client = client
            yield pg
        finally:
            browser.close()


def test_frontend_version_and_mode(page):
    """The page runs the frontend and the node rendering mode this run is about."""
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == page.frontend.version
    vue = page.evaluate("() => app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled') ?? null")
    assert vue is MODES[page.mode], (page.label, vue)


def test_page_loads_without_console_errors(page):
    assert page.console_errors == [], page.console_errors


def test_our_extensions_are_registered(page):
    names = page.evaluate("() => app.extensions.map((e) => e.name)")
    assert EXTENSIONS, "no XNeMo.* extension names found in web/js"
    assert sorted(n for n in names if n.startswith("XNeMo.")) == EXTENSIONS
    assert len(names) == len(set(names)), "an extension was registered twice"


def _changed_pixels(a: bytes, b: bytes) -> int:
    from PIL import Image, ImageChops

    first, second = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    diff = ImageChops.difference(first, second).convert("L")
    return sum(diff.point(lambda v: 255 if v > 40 else 0).histogram()[255:])


def _check_our_widgets(page, workflow: dict, label: str, shots: Path) -> None:
    """Our display widgets exist, stay out of both serializations, are drawn, and their drawing shows on screen."""
    page.evaluate(FIT_VIEW)
    page.wait_for_timeout(300)
    page.evaluate(INSTRUMENT, OUR_WIDGETS)
    page.evaluate(REDRAW, False)
    page.wait_for_timeout(300)
    drawn = page.evaluate("() => window.__xnemoDraws")
    wanted = {n["type"] for n in workflow["nodes"]} & set(OUR_WIDGETS)
    assert {entry["type"] for entry in drawn.values()} == wanted
    viewport = page.viewport_size
    for node_id, entry in drawn.items():
        kind = entry["type"]
        assert entry["found"], f"{label}: {kind} #{node_id} has no {OUR_WIDGETS[kind]} widget"
        assert entry["serialize"] is False and entry["optionsSerialize"] is False, (kind, entry)
        assert entry["draws"] > 0 and entry["rect"], f"{label}: {kind} #{node_id}: {OUR_WIDGETS[kind]} was not drawn"
        r = entry["rect"]
        x0, y0 = max(0.0, r["x"]), max(0.0, r["y"])
        clip = {
            "x": x0,
            "y": y0,
            "width": min(viewport["width"], r["x"] + r["width"]) - x0,
            "height": min(viewport["height"], r["y"] + r["height"]) - y0,
        }
        assert clip["width"] > 20 and clip["height"] > 10, f"{label}: {kind} #{node_id} drew off screen: {r}"
        shown = page.screenshot(clip=clip)
        page.evaluate(REDRAW, True)
        page.wait_for_timeout(300)
        hidden = page.screenshot(clip=clip)
        page.evaluate(REDRAW, False)
        page.wait_for_timeout(300)
        (shots / f"{kind}-{node_id}-widget.png").write_bytes(shown)
        changed = _changed_pixels(shown, hidden)
        assert changed >= MIN_CHANGED_PIXELS, (
            f"{label}: {kind} #{node_id}: drawing {OUR_WIDGETS[kind]} changed only {changed} pixels of its area {clip}"
        )


@pytest.mark.parametrize("stem", WORKFLOWS)
def test_example_workflow_in_the_frontend(page, artifacts_dir, stem):
    workflow = json.loads((EXAMPLES / f"{stem}.json").read_text(encoding="utf-8"))
    api_twin = json.loads((EXAMPLES / "api" / f"{stem}.json").read_text(encoding="utf-8"))
    before = len(page.console_errors)
    label = f"{stem} [{page.label}]"
    shots = artifacts_dir / "browser" / page.label
    shots.mkdir(parents=True, exist_ok=True)

    types = sorted({n["type"] for n in workflow["nodes"]})
    missing = page.evaluate("(types) => types.filter((t) => !(t in LiteGraph.registered_node_types))", types)
    assert missing == [], f"{label}: node types unknown to the frontend: {missing}"

    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1500 if page.mode == "vue" else 800)
    flagged = page.evaluate("() => app.graph._nodes.filter((n) => n.has_errors).map((n) => n.type)")
    assert flagged == [], f"{label}: nodes flagged as missing or broken: {flagged}"
    dialogs = page.locator(".p-dialog").filter(has_text=re.compile(r"missing|not found", re.IGNORECASE))
    assert dialogs.count() == 0, dialogs.first.inner_text()
    if page.mode == "vue":
        rendered = page.evaluate("() => document.querySelectorAll('[data-node-id]').length")
        assert rendered == len(workflow["nodes"]), f"{label}: {rendered} Vue nodes for {len(workflow['nodes'])}"

    _check_our_widgets(page, workflow, label, shots)

    # The frontend saves the same widgets_values the file holds (so the positional values are where it expects). On a
    # core that lacks a widget the file has (0.3.75: CreateVideo's trailing bit_depth), it keeps the values of the
    # widgets it defines: every one present and in its place, as the converter reads them by this core's inputs.
    info = page.client.object_info()
    saved = json.loads(page.evaluate("() => JSON.stringify(app.graph.serialize())"))
    saved_values = {n["id"]: n.get("widgets_values") or [] for n in saved["nodes"]}
    for node in workflow["nodes"]:
        values, where = node.get("widgets_values") or [], (label, node["id"], node["type"])
        if saved_values[node["id"]] == values or node["type"] not in info:
            assert saved_values[node["id"]] == values, where
            continue
        spec = info[node["type"]]
        assert workflow_to_api._widget_values({**node, "widgets_values": saved_values[node["id"]]}, spec) == (
            workflow_to_api._widget_values(node, spec)
        ), where
        assert len(saved_values[node["id"]]) < len(values), f"{where}: the frontend added widget values"

    # The frontend's own "Export (API)" equals our converter's twin, on the inputs the server defines (the frontend
    # also exports DOM-widget extras such as LoadVideo's 'video-preview', which the server ignores).
    exported = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert sorted(exported) == sorted(api_twin), (label, sorted(exported), sorted(api_twin))
    for node_id, node in api_twin.items():
        assert exported[node_id]["class_type"] == node["class_type"]
        spec = info[node["class_type"]]["input"]
        inputs = {k: v for k, v in exported[node_id]["inputs"].items() if _defined(spec, k)}
        twin = {k: v for k, v in node["inputs"].items() if _defined(spec, k)}  # the twin is the newest core's
        assert inputs == twin, (label, node_id, node["class_type"])

    page.wait_for_timeout(500)
    shot = shots / f"{stem}.png"
    page.screenshot(path=str(shot))
    if (
        stem == MAIN_WORKFLOW
        and page.frontend.name == "pinned"
        and page.mode == "classic"
        and os.environ.get("XNEMO_UPDATE_DOCS_SCREENSHOT") == "1"
    ):
        # The README's picture is refreshed on request only, so a test run leaves the checkout clean.
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)

    assert page.console_errors[before:] == [], page.console_errors[before:]


# Core nodes whose widgets grew after the 0.3.75 floor: the widget values a workflow saved on the floor holds, and
# the widgets (prompt inputs) later cores added. CreateVideo gained `bit_depth`; SaveVideo's `codec` became a dynamic
# combo whose "h264" option adds `codec.encoding`.
FLOOR_WIDGET_COUNT = {"CreateVideo": 1, "SaveVideo": 3}
NEWER_CORE_WIDGETS = {"CreateVideo": ["bit_depth"], "SaveVideo": ["codec.encoding"]}


def _as_saved_on_the_floor(workflow: dict) -> dict:
    """The workflow as ComfyUI 0.3.75's frontend saves it: the widgets new in later cores are not in it."""
    floor = json.loads(json.dumps(workflow))
    for node in floor["nodes"]:
        if node["type"] in FLOOR_WIDGET_COUNT:
            node["widgets_values"] = node["widgets_values"][: FLOOR_WIDGET_COUNT[node["type"]]]
    return floor


def _defined(spec: dict, name: str) -> bool:
    """`name` is an input of this core's node: top level, or below a dynamic combo (`codec.encoding`)."""
    defined = {**spec.get("required", {}), **spec.get("optional", {})}
    head = name.split(".")[0]
    return name in defined or (head in defined and defined[head][0] == workflow_to_api.DYNAMIC_COMBO)


@pytest.mark.parametrize("stem", WORKFLOWS)
def test_a_workflow_saved_on_the_floor_opens_with_every_value_in_place(page, stem):
    """What users share: a workflow saved on ComfyUI 0.3.75. Opened on this core, no value is missing or misplaced;
    a widget the floor lacks gets core's default, which is the value the committed (newest) workflow holds, so the
    prompt it queues is the committed twin."""
    workflow = json.loads((EXAMPLES / f"{stem}.json").read_text(encoding="utf-8"))
    api_twin = json.loads((EXAMPLES / "api" / f"{stem}.json").read_text(encoding="utf-8"))
    floor = _as_saved_on_the_floor(workflow)
    info = page.client.object_info()
    for node in workflow["nodes"]:
        for name in NEWER_CORE_WIDGETS.get(node["type"], []):
            mapped = workflow_to_api._widget_values(node, info[node["type"]])
            if name in mapped:  # this core has it: the committed value is its default, which the floor's file gets
                assert mapped[name] == {"bit_depth": 8, "codec.encoding": "auto"}[name], (stem, node["type"], name)
    before = len(page.console_errors)
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", floor)
    page.wait_for_timeout(1500 if page.mode == "vue" else 800)
    saved = json.loads(page.evaluate("() => JSON.stringify(app.graph.serialize())"))
    for node in saved["nodes"]:
        if node["type"] in info:
            spec = info[node["type"]]
            committed = next(n for n in workflow["nodes"] if n["id"] == node["id"])
            assert workflow_to_api._widget_values(node, spec) == workflow_to_api._widget_values(committed, spec), (
                stem,
                node["id"],
                node["type"],
            )
    exported = page.evaluate("async () => (await app.graphToPrompt()).output")
    for node_id, node in api_twin.items():
        spec = info[node["class_type"]]["input"]
        inputs = {k: v for k, v in exported[node_id]["inputs"].items() if _defined(spec, k)}
        assert inputs == {k: v for k, v in node["inputs"].items() if _defined(spec, k)}, (stem, node_id)
    assert page.console_errors[before:] == [], page.console_errors[before:]
