"""Frontends under test and one ComfyUI per frontend for the browser tests.

Two frontends: the one the ComfyUI under test pins (1.47.12 for 0.30.0, in the venv; 1.32.9 for the 0.3.75 floor,
unpacked in `.tools/frontend-1.32.9/`) and the newest from PyPI, which
`scripts/setup.sh` unpacks into `.tools/frontend-newest/` (ignored by git, never installed into the venv) and which
the server gets with `--front-end-root`. The newest is opened in the classic canvas and in the Vue node rendering mode
(setting `Comfy.VueNodes.Enabled`), the pinned one in the classic canvas: each browser test runs three times.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example_workflows"
NEWEST_DIR = Path(os.environ.get("XNEMO_NEWEST_FRONTEND") or ROOT / ".tools" / "frontend-newest")


@dataclass
class Frontend:
    name: str  # "pinned" or "newest"
    version: str
    static_root: Path | None  # None: the venv's package, as ComfyUI serves it by default


def pinned_frontend() -> Frontend:
    """The frontend the ComfyUI under test pins (1.47.12 for 0.30.0, 1.32.9 for the 0.3.75 floor)."""
    import comfy_harness

    pinned = comfy_harness.pinned_frontend()
    return Frontend("pinned", pinned.version, pinned.static_root)


def newest_frontend() -> Frontend:
    static = NEWEST_DIR / "comfyui_frontend_package" / "static"
    metas = sorted(NEWEST_DIR.glob("comfyui_frontend_package-*.dist-info/METADATA"))
    if not (static / "index.html").is_file() or not metas:
        pytest.fail(
            f"the newest frontend is not unpacked in {NEWEST_DIR}: run `bash scripts/setup.sh` (it downloads "
            "comfyui-frontend-package from PyPI into .tools/frontend-newest/)"
        )
    version = next(
        line.split(":", 1)[1].strip() for line in metas[-1].read_text().splitlines() if line.startswith("Version:")
    )
    return Frontend("newest", version, static)


def workflow_model_files() -> dict[str, set[str]]:
    """Model file names the example workflows select, per model folder (from the loaders' `properties.models`)."""
    files: dict[str, set[str]] = {}
    for path in EXAMPLES.glob("*.json"):
        for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
            for model in node.get("properties", {}).get("models") or []:
                files.setdefault(model["directory"], set()).add(model["name"])
    return files


def _start(name: str, work_dir: Path, media_dir: Path):
    """ComfyUI serving one frontend, with the media and (empty) model files the example workflows name.

    Empty files are enough: the loaders' lists show them, so no frontend flags a model as missing (and none tries to
    download one). Nothing is executed.
    """
    import comfy_harness

    frontend = pinned_frontend() if name == "pinned" else newest_frontend()
    extra = ["--front-end-root", str(frontend.static_root)] if frontend.static_root else []
    server = comfy_harness.start_server(work_dir, extra_args=extra)
    try:
        for folder, names in workflow_model_files().items():
            for file_name in names:
                (server.model_dirs[folder] / file_name).touch()
        client = server.client()
        client.upload_image(media_dir / "ref_image.png", name="xnemo_portrait.png")
        for path in EXAMPLES.glob("*.json"):
            for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
                if node["type"] == "LoadVideo":
                    client.upload_image(media_dir / "driving_video.mp4", name=node["widgets_values"][0])
    except BaseException:
        server.stop()
        raise
    server.frontend = frontend
    return server


@pytest.fixture(scope="module")
def frontend_server(tmp_path_factory, media_dir):
    """`frontend_server(name)`: the server for frontend "pinned" or "newest"; one runs at a time."""
    running: dict = {}

    def get(name: str):
        if name not in running:
            for other in list(running):
                running.pop(other).stop()
            running[name] = _start(name, tmp_path_factory.mktemp(f"comfyui-{name}"), media_dir)
        return running[name]

    try:
        yield get
    finally:
        for server in running.values():
            server.stop()
