"""Each example workflow in the real ComfyUI frontend, in Debian's headless chromium against the test server.

Asserts per workflow: every node type is registered and the frontend flags none as missing, the page logs no console
errors, our JS extensions are registered, our display widgets exist and are drawn, the frontend's own serialization
gives back the file's widgets_values, and its "Export (API)" equals our committed API twin. Screenshots go to
test-artifacts/browser/ (with XNEMO_UPDATE_DOCS_SCREENSHOT=1 the main workflow's also to docs/images/, shown in the README).

Ignored console errors, each unrelated to this pack:
- "Failed to load resource" for requests this test aborts (anything not on the 127.0.0.1 test server: tests never
  reach the network; the frontend asks api.comfy.org about releases and nodes) and for the 404s of a fresh user
  folder (user.css, favicon, userdata listings, comfy.templates.json);
- the frontend's own startup "TypeError: Cannot read properties of undefined (reading 'id') at onChange": frontend
  1.32.9 raises it on a fresh profile with no custom nodes at all (checked with --disable-all-custom-nodes).
The missing-models warning is turned off: the test server has no model files, and the dialog would fetch the model
URLs (network). Model entries are checked in tests/server/test_example_workflows.py instead.
"""

from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example_workflows"
WORKFLOWS = sorted(p.stem for p in EXAMPLES.glob("*.json"))
MAIN_WORKFLOW = "xnemo_portrait_animation"
DOCS_IMAGE = ROOT / "docs" / "images" / "portrait_animation_workflow.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FRESH_PROFILE_404 = re.compile(r"/(user\.css|favicon\.ico|api/userdata\b.*)$")
FRONTEND_STARTUP_BUG = "TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange"
OUR_WIDGETS = {"XNeMoInterpolateMotion": "easing_preview", "XNeMoSampleAnimation": "window_readout"}
EXTENSIONS = sorted(set(re.findall(r'name:\s*"(XNeMo\.[A-Za-z]+)"',
                                   "".join(p.read_text() for p in (ROOT / "web" / "js").glob("*.js")))))

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
# Wrap our widgets' draw() with a counter, redraw the canvas, and report what was drawn.
COUNT_DRAWS = """(wanted) => {
  const out = {};
  for (const node of app.graph._nodes) {
    const name = wanted[node.type];
    if (!name) continue;
    const widget = node.widgets?.find((w) => w.name === name);
    const entry = { found: !!widget, serialize: widget?.serialize, optionsSerialize: widget?.options?.serialize,
                    draws: 0 };
    if (widget) {
      const draw = widget.draw;
      widget.draw = function () { entry.draws += 1; return draw.apply(this, arguments); };
    }
    out[node.id] = [node.type, entry];
  }
  app.canvas.draw(true, true);
  return out;
}"""


@pytest.fixture(scope="module")
def page(comfy_server, comfy_client, media_dir):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (scripts/setup.sh does, as root)")

    # Files the workflows name, so the loaders' previews resolve; no tutorial, no missing-models probe.
    comfy_client.upload_image(media_dir / "ref_image.png", name="xnemo_portrait.png")
    for wf in WORKFLOWS:
        for node in json.loads((EXAMPLES / f"{wf}.json").read_text())["nodes"]:
            if node["type"] == "LoadVideo":
                comfy_client.upload_image(media_dir / "driving_video.mp4", name=node["widgets_values"][0])
    status, body = comfy_client.post_json("/settings", {"Comfy.TutorialCompleted": True,
                                                        "Comfy.Workflow.ShowMissingModelsWarning": False})
    assert status == 200, body

    errors: list[str] = []
    aborted: set[str] = set()
    local = comfy_server.url

    def on_route(route):
        if route.request.url.startswith(local):
            route.continue_()
        else:
            aborted.add(route.request.url)
            route.abort()

    def on_console(message):
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        text = message.text
        if text.startswith("Failed to load resource") and (
                url in aborted or not url.startswith(local) or FRESH_PROFILE_404.search(url)):
            return
        if text.startswith(FRONTEND_STARTUP_BUG):
            return
        errors.append(text)

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
            yield pg
        finally:
            browser.close()


def test_page_loads_without_console_errors(page):
    assert page.console_errors == [], page.console_errors


def test_our_extensions_are_registered(page):
    names = page.evaluate("() => app.extensions.map((e) => e.name)")
    assert EXTENSIONS, "no XNeMo.* extension names found in web/js"
    assert sorted(n for n in names if n.startswith("XNeMo.")) == EXTENSIONS
    assert len(names) == len(set(names)), "an extension was registered twice"


@pytest.mark.parametrize("stem", WORKFLOWS)
def test_example_workflow_in_the_frontend(page, comfy_client, artifacts_dir, stem):
    workflow = json.loads((EXAMPLES / f"{stem}.json").read_text(encoding="utf-8"))
    api_twin = json.loads((EXAMPLES / "api" / f"{stem}.json").read_text(encoding="utf-8"))
    before = len(page.console_errors)

    types = sorted({n["type"] for n in workflow["nodes"]})
    missing = page.evaluate("(types) => types.filter((t) => !(t in LiteGraph.registered_node_types))", types)
    assert missing == [], f"node types unknown to the frontend: {missing}"

    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(800)
    flagged = page.evaluate("() => app.graph._nodes.filter((n) => n.has_errors).map((n) => n.type)")
    assert flagged == [], f"nodes flagged as missing or broken: {flagged}"
    dialogs = page.locator(".p-dialog").filter(has_text=re.compile(r"missing|not found", re.I))
    assert dialogs.count() == 0, dialogs.first.inner_text()

    # Our display widgets exist on our nodes, stay out of both serializations, and are drawn.
    page.evaluate(FIT_VIEW)
    drawn = page.evaluate(COUNT_DRAWS, OUR_WIDGETS)
    wanted = {n["type"] for n in workflow["nodes"]} & set(OUR_WIDGETS)
    assert {kind for kind, _ in drawn.values()} == wanted
    for node_id, (kind, entry) in drawn.items():
        assert entry["found"], f"{kind} #{node_id} has no {OUR_WIDGETS[kind]} widget"
        assert entry["serialize"] is False and entry["optionsSerialize"] is False, (kind, entry)
        assert entry["draws"] > 0, f"{kind} #{node_id}: {OUR_WIDGETS[kind]} was not drawn"

    # The frontend saves the same widgets_values the file holds (so the positional values are where it expects).
    saved = json.loads(page.evaluate("() => JSON.stringify(app.graph.serialize())"))
    saved_values = {n["id"]: n.get("widgets_values") for n in saved["nodes"]}
    for node in workflow["nodes"]:
        assert (saved_values[node["id"]] or []) == (node.get("widgets_values") or []), (stem, node["id"], node["type"])

    # The frontend's own "Export (API)" equals our converter's twin, on the inputs the server defines (the frontend
    # also exports DOM-widget extras such as LoadVideo's 'video-preview', which the server ignores).
    exported = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert sorted(exported) == sorted(api_twin), (sorted(exported), sorted(api_twin))
    info = comfy_client.object_info()
    for node_id, node in api_twin.items():
        assert exported[node_id]["class_type"] == node["class_type"]
        spec = info[node["class_type"]]["input"]
        defined = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs = {k: v for k, v in exported[node_id]["inputs"].items() if k in defined}
        assert inputs == node["inputs"], (stem, node_id, node["class_type"])

    page.wait_for_timeout(500)
    shot = artifacts_dir / "browser" / f"{stem}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    if stem == MAIN_WORKFLOW and os.environ.get("XNEMO_UPDATE_DOCS_SCREENSHOT") == "1":
        # The README's picture is refreshed on request only, so a test run leaves the checkout clean.
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)

    assert page.console_errors[before:] == [], page.console_errors[before:]
