"""Registry metadata and the archive the registry would publish, checked with the registry's own tool (comfy-cli).

comfy-cli lives in its own venv in .tools/comfy-cli/ (scripts/setup.sh puts it there): it drags many dependencies that
must not enter ComfyUI's environment. It runs offline here: telemetry and its update check off, and any request it
might still make goes to a proxy that does not exist, so it fails instead of reaching the network.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from xnemo_pack.nodes import core_version

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".tools" / "comfy-cli" / "bin" / "comfy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
OFFLINE = {
    "DO_NOT_TRACK": "1",
    "COMFY_NO_UPDATE_CHECK": "1",
    "COMFY_NO_TELEMETRY": "1",
    "NO_COLOR": "1",
    **{k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    "NO_PROXY": "",
    "no_proxy": "",
}


def comfy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if not COMFY.is_file():
        pytest.fail(f"comfy-cli not found at {COMFY}: run `bash scripts/setup.sh` (it installs comfy-cli there)")
    return subprocess.run(
        [str(COMFY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **OFFLINE},
    )


def requirement_names(lines) -> list[str]:
    return [
        re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower()
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_comfy_node_validate_passes():
    result = comfy("node", "validate")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "All validation checks passed" in out, out
    assert not re.search(r"warning|error", out, re.IGNORECASE), out  # the registry would drop fields it warns about


def test_registry_metadata():
    project, tool = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert tool["PublisherId"] and tool["DisplayName"]
    assert tool["requires-comfyui"] == f">={core_version.FLOOR}"
    frontend = [d for d in project["dependencies"] if d.startswith("comfyui-frontend-package")]
    assert frontend == ["comfyui-frontend-package>=1.32.9"], "the frontend range the README states"
    classifiers = project["classifiers"]
    assert "Operating System :: OS Independent" in classifiers
    assert "Environment :: GPU :: NVIDIA CUDA" in classifiers

    # The icon: a real PNG in the repository, where the URL on the main branch points, within the registry's limits.
    from PIL import Image

    icon = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", tool["Icon"])
    assert icon, tool["Icon"]
    with Image.open(ROOT / icon.group(1)) as image:
        assert image.format == "PNG" and image.width <= 800 and image.height <= 400, (image.format, image.size)


def test_requirements_match_pyproject_and_pin_nothing_of_comfyui():
    """requirements.txt (what ComfyUI-Manager installs) = pyproject dependencies minus the frontend range; no pins
    of what ComfyUI's environment owns."""
    reqs = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    deps = requirement_names(
        d for d in PYPROJECT["project"]["dependencies"] if not d.startswith("comfyui-frontend-package")
    )
    assert reqs == deps
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name = requirement_names([line])
        if name and name[0] in {"torch", "torchvision", "numpy", "diffusers", "transformers"}:
            assert line.strip() == name[0], f"requirements.txt pins {line.strip()!r}: ComfyUI owns that package"


# requirement name -> the module the pack imports for it
IMPORT_NAMES = {"pillow": "PIL"}
PACK_CODE = ("__init__.py", "nodes", "xnemo_core")


def imported_top_modules(paths) -> set[str]:
    import ast

    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_runtime_requirement_is_imported_by_the_pack():
    """ComfyUI-Manager installs requirements.txt into the user's environment: list only what the pack's code imports
    (diffusers was listed and never imported, dragging its dependencies in for nothing)."""
    files = [p for name in PACK_CODE for p in ([ROOT / name] if name.endswith(".py") else (ROOT / name).rglob("*.py"))]
    imported = imported_top_modules(files)
    declared = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    unused = [name for name in declared if IMPORT_NAMES.get(name, name) not in imported]
    assert not unused, f"requirements.txt lists {unused}, which the pack never imports"
    assert "diffusers" not in declared and "diffusers" not in imported


def test_published_archive(tmp_path):
    """`comfy node pack` (the archive `comfy node publish` uploads): the pack, its web files, docs and workflows;
    none of the tests, test artifacts, tools or local environments."""
    result = comfy("node", "pack")
    archive = ROOT / "node.zip"
    assert result.returncode == 0 and archive.is_file(), result.stdout + result.stderr
    kept = tmp_path / "node.zip"
    shutil.move(archive, kept)
    names = set(zipfile.ZipFile(kept).namelist())

    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    )
    wanted = {
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "README.md",
        "LICENSE",
        "web/icon.png",
        "nodes/__init__.py",
        "xnemo_core/__init__.py",
        "scripts/convert_to_safetensors.py",
    }
    wanted |= {
        p
        for p in tracked
        if p.startswith(("web/", "docs/", "example_workflows/", "subgraphs/", "nodes/", "xnemo_core/"))
    }
    assert {p for p in wanted if p.startswith("example_workflows/api/")}, "no API twins tracked?"
    assert {p for p in wanted if p.startswith("subgraphs/")}, "no subgraph blueprint tracked?"
    assert not wanted - names, f"missing from the archive: {sorted(wanted - names)}"
    for image in re.findall(r"\]\((docs/images/[^)]+)\)", (ROOT / "README.md").read_text()):
        assert image in names, f"the README shows {image} but the archive lacks it"

    unwanted = re.compile(
        r"^(tests|\.ci|test-artifacts|demo_output|output|\.tools|\.venv|\.comfyui)/|__pycache__|"
        r"\.pyc$|^node\.zip$|\.(pth|pt|ckpt|bin|safetensors)$"
    )
    assert not sorted(n for n in names if unwanted.search(n)), sorted(n for n in names if unwanted.search(n))


XNEMO_WEIGHTS_FOLDER = "https://drive.google.com/drive/folders/1RdjBYYbstO7SOchDg7oimoAwu03g_-mI"


def test_example_workflow_model_entries_link_files_and_name_folders():
    """What the frontend's missing-models dialog offers: a target folder and a direct file link for every model
    (`.../resolve/<revision>/<file>` on Hugging Face). The official X-NeMo files exist only in the authors' Google
    Drive folder, which has no per-file links: their entries point at that folder (the README says so)."""
    import json

    entries = 0
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
            for model in node.get("properties", {}).get("models") or []:
                entries += 1
                where = f"{path.name} #{node['id']} {model.get('name')}"
                assert model.get("directory") and model.get("name"), where
                url = model["url"]
                if model["directory"] == "x-nemo":
                    assert url == XNEMO_WEIGHTS_FOLDER, where
                else:
                    assert re.fullmatch(r"https://huggingface\.co/[^/]+/[^/]+/resolve/[^/]+/\S+\.\w+", url), where
    assert entries >= 6


def test_the_tested_core_range_has_one_source():
    """The floor in pyproject.toml, the versions scripts/setup.sh unpacks and the range the pack logs agree, and the
    README says both."""
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert f'COMFYUI_FLOOR="{core_version.FLOOR}"' in setup
    assert f'COMFYUI_NEWEST="{core_version.NEWEST_TESTED}"' in setup
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"ComfyUI {core_version.NEWEST_TESTED}" in readme and f"ComfyUI {core_version.FLOOR}" in readme


@pytest.mark.parametrize(
    ("version", "level", "words"),
    [
        ("0.3.74", logging.WARNING, "older than 0.3.75"),
        ("0.2.9", logging.WARNING, "Update ComfyUI"),
        ("0.3.75", logging.INFO, "tested range"),
        ("0.10.1", logging.INFO, "tested range"),  # numeric, not string, order: 0.10 > 0.3
        ("0.30.0", logging.INFO, "tested range"),
        ("0.30.1", logging.INFO, "newer than 0.30.0"),
        ("1.0.0", logging.INFO, "newer than 0.30.0"),
        ("nightly", logging.WARNING, "cannot read"),
    ],
)
def test_a_core_outside_the_tested_range_is_told_at_start(version, level, words):
    got_level, message = core_version.core_version_message(version)
    assert got_level == level and words in message, message
