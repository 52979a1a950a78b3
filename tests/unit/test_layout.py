"""The house rules, read from the source: pure/ never imports ComfyUI or a higher layer, adapters/ never import the
pipeline or the nodes, the engine never imports the nodes, no import cycles, and the module map names every room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "xnemo_core"
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "latent_preview", "server", "execution"}
LAYERS = {"pure": 0, "adapters": 1, "pipeline": 2}


def rooms() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if p.name != "__init__.py")


def room_name(path: Path) -> str:
    return ".".join(path.relative_to(ENGINE).with_suffix("").parts)


def layer(name: str) -> int:
    return LAYERS[name.split(".")[0]]


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(absolute top-level modules, engine rooms imported relatively, as dotted names under xnemo_core)."""
    absolute, engine = set(), set()
    package = path.relative_to(ENGINE).parent.parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - (node.level - 1)]) if node.level - 1 <= len(package) else None
            assert base is not None, f"{path}: relative import climbs out of xnemo_core"
            target = base + (node.module.split(".") if node.module else [])
            names = (
                [target + [a.name] for a in node.names]
                if not node.module or (ENGINE.joinpath(*target)).is_dir()
                else [target]
            )
            engine.update(".".join(n) for n in names if n)
    return absolute, engine


@pytest.mark.parametrize("path", rooms(), ids=room_name)
def test_imports_point_down_or_sideways(path):
    absolute, engine = imports(path)
    here = room_name(path)
    assert not engine & {"nodes"} and "nodes" not in {e.split(".")[0] for e in engine}, f"{here} imports the nodes"
    for target in engine:
        assert layer(target) <= layer(here), f"{here} imports {target}: a higher layer"
    if here.startswith("pure."):
        assert not absolute & COMFY_MODULES, (
            f"{here} imports {absolute & COMFY_MODULES}: pure rooms never import ComfyUI"
        )


def test_no_import_cycles():
    graph = {
        room_name(p): {t for t in imports(p)[1] if (ENGINE / (t.replace(".", "/") + ".py")).is_file()} for p in rooms()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [node, nxt])}"
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_module_map_and_architecture_name_every_room():
    engine_map = (ENGINE / "__init__.py").read_text()
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for path in rooms():
        name = path.stem
        assert f"    {name} " in engine_map or f"\n{name} " in engine_map, f"xnemo_core/__init__.py misses {name}"
        assert f"`{room_name(path).replace('.', '/')}" in architecture, f"docs/architecture.md misses {room_name(path)}"
    for folder in ("pure", "adapters"):
        assert (ENGINE / folder / "__init__.py").is_file()


def test_unit_tests_need_torch_only():
    """tests/unit runs without ComfyUI: it imports pure rooms only (adapters, pipeline, nodes: tests/comfy)."""
    for path in sorted((ROOT / "tests" / "unit").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in COMFY_MODULES, f"{path.name} imports {name}"
                assert not name.startswith(
                    ("xnemo_pack.xnemo_core.adapters", "xnemo_pack.xnemo_core.pipeline", "xnemo_pack.nodes")
                ), f"{path.name} imports {name}"
