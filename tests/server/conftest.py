"""Fixtures for tests against a real ComfyUI server (started once per session, on 127.0.0.1).

The server itself (`comfy_server`, `comfy_client`) is in `tests/conftest.py`, shared with `tests/browser`; the launcher
and client live in `scripts/comfy_harness.py`, shared with `scripts/demo.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from server_graphs import SIZE


@pytest.fixture(scope="session")
def xnemo_fixture_models(comfy_server, fixture_dir: Path) -> dict[str, str]:
    """Copy the tiny fixture checkpoints into the server's `x-nemo` folder; returns {loader input id: file name}."""
    from xnemo_pack.xnemo_core.pure.constants import CHECKPOINT_FILES

    names = {}
    for role, stem in CHECKPOINT_FILES.items():
        source = fixture_dir / f"{stem}.pth"
        target = comfy_server.model_dirs["x-nemo"] / source.name
        if not target.exists():
            shutil.copyfile(source, target)
        names[role] = source.name
    return names


@pytest.fixture(scope="session")
def models(comfy_server, xnemo_fixture_models, tmp_path_factory) -> dict:
    """Tiny X-NeMo .safetensors + random CLIP ViT-L + SD VAE (written once per session) next to the fixture .pth set."""
    from make_tiny_weights import write_tiny_models

    cache = tmp_path_factory.getbasetemp() / "xnemo_tiny_models"
    written = write_tiny_models(cache)  # skips files that exist: shared with the in-process hardening tests
    for folder in ("x-nemo", "clip_vision", "vae"):
        for source in (cache / folder).iterdir():
            target = comfy_server.model_dirs[folder] / source.name
            if not target.exists():
                target.symlink_to(source)
    return {
        "pth": dict(xnemo_fixture_models),
        "safetensors": written["x-nemo"],
        "clip_vision": written["clip_vision"],
        "vae": written["vae"],
    }


def _upload(client, image: Image.Image, path: Path) -> str:
    image.save(path)
    return client.upload_image(path)


@pytest.fixture(scope="session")
def pictures(comfy_client, media_dir, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hardening_pictures")
    portrait = Image.open(media_dir / "ref_image.png").convert("RGB")
    small = portrait.resize((SIZE, SIZE), Image.LANCZOS)
    pair = Image.new("RGB", (2 * SIZE, SIZE))
    pair.paste(small, (0, 0))
    pair.paste(small, (SIZE, 0))
    return {
        "portrait": _upload(comfy_client, small, folder / "hardening_portrait.png"),
        "odd": _upload(comfy_client, portrait.resize((123, 97), Image.LANCZOS), folder / "hardening_odd_123x97.png"),
        "two_faces": _upload(comfy_client, pair, folder / "hardening_two_faces.png"),
    }
