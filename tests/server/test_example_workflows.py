"""The example workflows: their API twins are up to date, and each runs end to end on tiny random weights.

Media: the shared portrait downscaled to 256x256 and driving clips trimmed to 8-12 frames at 160x160 (25 fps, with a
generated audio track so the audio path is exercised), uploaded under the file names the workflows use. Weights: the
pack's own tiny random files (`scripts/make_tiny_weights.py.write_tiny_models`), as `scripts/demo.py --tiny` uses them.
"""

from __future__ import annotations

import json
from fractions import Fraction
from importlib import import_module
from pathlib import Path

import pytest
import workflow_to_api

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example_workflows"
WORKFLOWS = sorted(p.stem for p in EXAMPLES.glob("*.json"))
REQUIRED = {"xnemo_portrait_animation", "xnemo_motion_interpolation", "xnemo_long_video"}
PORTRAIT_SIZE = 256  # the uploaded portrait: Paste Back must give back frames of this size
DRIVING_SIZE = 160
FPS = 25
GEN_SIZE = 128  # generation width = height (multiple of 64)
STEPS = 2
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")

# Per workflow: driving clips {upload name: (first frame, frame count)}, frames expected in the output, audio expected,
# and test-size overrides {class_type: {input: value}}.
CASES = {
    "xnemo_portrait_animation": {
        "clips": {"xnemo_driving.mp4": (0, 8)},
        "frames": 8,
        "audio": True,
        "overrides": {},
    },
    "xnemo_motion_interpolation": {
        "clips": {"xnemo_driving_a.mp4": (0, 8), "xnemo_driving_b.mp4": (100, 8)},
        "frames": 8,
        "audio": False,
        "overrides": {"XNeMoInterpolateMotion": {"frames": 8}},
    },
    "xnemo_long_video": {
        # 12 frames in windows of 6 overlapping by 2: 3 windows per step, so the windowing really runs
        "clips": {"xnemo_driving_long.mp4": (0, 12)},
        "frames": 12,
        "audio": True,
        "overrides": {"XNeMoSampleAnimation": {"context_length": 6, "context_overlap": 2}},
    },
}


def _load(stem: str) -> dict:
    return json.loads((EXAMPLES / f"{stem}.json").read_text(encoding="utf-8"))


def test_required_examples_exist_with_thumbnails():
    assert REQUIRED <= set(WORKFLOWS), f"example_workflows/ has {WORKFLOWS}"
    for stem in WORKFLOWS:
        thumbs = [EXAMPLES / f"{stem}{ext}" for ext in (".jpg", ".png", ".webp")]
        assert any(t.is_file() and t.stat().st_size > 0 for t in thumbs), f"{stem} has no thumbnail"
        assert (EXAMPLES / "api" / f"{stem}.json").is_file(), f"{stem} has no API twin in example_workflows/api/"


@pytest.mark.parametrize("stem", WORKFLOWS)
def test_examples_use_only_core_and_pack_nodes(comfy_client, stem):
    """Every node is this pack's or ComfyUI core's (or a frontend-only Note); loaders say where their models go."""
    info = comfy_client.object_info()
    for node in _load(stem)["nodes"]:
        kind = node["type"]
        if kind in workflow_to_api.FRONTEND_ONLY:
            continue
        assert kind in info, f"{stem}: node {node['id']} type {kind} is not registered"
        module = info[kind]["python_module"]
        assert module in ("nodes", "custom_nodes.xnemo") or module.startswith("comfy_extras."), (kind, module)
        assert kind not in ("VAELoader", "VAEDecode"), (
            f"{stem}: node {node['id']} is core {kind}; the examples use X-NeMo Load VAE (reads the diffusers SVD "
            f"file) and X-NeMo VAE Decode (the official fixed chunks)"
        )
        if kind in ("XNeMoLoader", "CLIPVisionLoader", "XNeMoVAELoader"):
            models = node.get("properties", {}).get("models")
            assert models, f"{stem}: {kind} has no properties.models"
            folders = {"XNeMoLoader": "x-nemo", "CLIPVisionLoader": "clip_vision", "XNeMoVAELoader": "vae"}
            assert {m["directory"] for m in models} == {folders[kind]}
            assert {m["name"] for m in models} <= set(node["widgets_values"]), "models must name the files selected"
            assert all(m["url"].startswith("https://") for m in models), "the frontend's schema needs a url"


# Widget inputs core added after the 0.3.75 floor: in the committed (newest core's) twins, unknown to the floor.
NEWER_CORE_INPUTS = {"CreateVideo": {"bit_depth"}, "SaveVideo": {"codec.encoding"}}


def _on_this_core(prompt: dict, info: dict) -> dict:
    """The prompt as this core reads it: inputs it does not define dropped (only those core added since the floor)."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        spec = info[node["class_type"]]["input"]
        defined = {**spec.get("required", {}), **spec.get("optional", {})}
        defined.update(  # inputs below a dynamic combo (0.30.0's SaveVideo `codec.encoding`)
            {k: None for k in node["inputs"] if defined.get(k.split(".")[0], [""])[0] == workflow_to_api.DYNAMIC_COMBO}
        )
        unknown = set(node["inputs"]) - set(defined)
        assert unknown <= NEWER_CORE_INPUTS.get(node["class_type"], set()), (node["class_type"], unknown)
        node["inputs"] = {k: v for k, v in node["inputs"].items() if k in defined}
    return out


def test_api_twins_match_a_fresh_conversion(comfy_client):
    """example_workflows/api/ is generated on the newest core: converting the UI files against the live /object_info
    gives them back (on the floor: minus the inputs core added since, which the floor's conversion cannot know)."""
    info = comfy_client.object_info()
    stale = []
    for stem in WORKFLOWS:
        fresh = workflow_to_api.convert(_load(stem), info)
        committed = json.loads((EXAMPLES / "api" / f"{stem}.json").read_text(encoding="utf-8"))
        if workflow_to_api.dumps(fresh) != workflow_to_api.dumps(_on_this_core(committed, info)):
            stale.append(stem)
    assert not stale, f"API twins out of date, run `.venv/bin/python scripts/workflow_to_api.py`: {stale}"


def test_seeds_are_fixed_in_the_examples():
    """A seed widget is followed by control_after_generate; the examples keep it 'fixed' so the twins stay stable."""
    for stem in WORKFLOWS:
        for node in _load(stem)["nodes"]:
            if node["type"] == "XNeMoSampleAnimation":
                assert node["widgets_values"][1] == "fixed", (stem, node["widgets_values"][:2])


# ----------------------------------------------------------------------------------------------------------------------
# Running the twins


def _write_clip(source: Path, target: Path, start: int, count: int) -> Path:
    """`count` frames of `source` from `start`, scaled to DRIVING_SIZE, at FPS, with a 440 Hz tone as audio."""
    import av
    import numpy as np

    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        video = dst.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        video.width = video.height = DRIVING_SIZE
        video.pix_fmt = "yuv420p"
        audio = dst.add_stream("aac", rate=16000)
        audio.layout = "mono"
        frames = []
        for i, frame in enumerate(src.decode(video=0)):
            if i >= start:
                frames.append(frame.reformat(width=DRIVING_SIZE, height=DRIVING_SIZE, format="yuv420p"))
            if len(frames) == count:
                break
        for i, frame in enumerate(frames):
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in video.encode(frame):
                dst.mux(packet)
        for packet in video.encode():
            dst.mux(packet)
        samples = int(16000 * count / FPS)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)[None, :]
        aframe = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        aframe.sample_rate = 16000
        for packet in audio.encode(aframe):
            dst.mux(packet)
        for packet in audio.encode():
            dst.mux(packet)
    return target


@pytest.fixture(scope="module")
def tiny_weights(comfy_server) -> dict:
    """The pack's tiny random weights in the server's model folders (the same files `demo.py --tiny` writes)."""
    demo_weights = import_module("make_tiny_weights")
    return demo_weights.write_tiny_models(comfy_server.work_dir / "models")


@pytest.fixture(scope="module")
def uploaded_media(comfy_client, media_dir, tmp_path_factory) -> None:
    from PIL import Image

    work = tmp_path_factory.mktemp("example_media")
    portrait = work / "xnemo_portrait.png"
    Image.open(media_dir / "ref_image.png").convert("RGB").resize((PORTRAIT_SIZE, PORTRAIT_SIZE)).save(portrait)
    comfy_client.upload_image(portrait)
    for case in CASES.values():
        for name, (start, count) in case["clips"].items():
            comfy_client.upload_image(_write_clip(media_dir / "driving_video.mp4", work / name, start, count))


def _tiny_prompt(stem: str, weights: dict) -> dict:
    prompt = json.loads((EXAMPLES / "api" / f"{stem}.json").read_text(encoding="utf-8"))
    overrides = {
        "XNeMoLoader": {**weights["x-nemo"], "weight_dtype": "fp32"},
        "CLIPVisionLoader": {"clip_name": weights["clip_vision"]},
        "XNeMoVAELoader": {"vae_name": weights["vae"]},
        "XNeMoReferenceCondition": {"width": GEN_SIZE, "height": GEN_SIZE},
        "XNeMoSampleAnimation": {"steps": STEPS},
    }
    for kind, values in CASES[stem]["overrides"].items():
        overrides[kind] = {**overrides.get(kind, {}), **values}
    for node in prompt.values():
        for name, value in overrides.get(node["class_type"], {}).items():
            assert name in node["inputs"], f"{stem}: {node['class_type']} has no input {name}"
            node["inputs"][name] = value
    return prompt


@pytest.mark.parametrize("stem", sorted(CASES))
def test_example_runs_on_tiny_weights(comfy_client, tiny_weights, uploaded_media, stem, tmp_path):
    import av

    case = CASES[stem]
    entry = comfy_client.run(_tiny_prompt(stem, tiny_weights), timeout=900)
    videos = [f for f in comfy_client.output_files(entry) if f["filename"].lower().endswith(VIDEO_SUFFIXES)]
    assert len(videos) == 1, f"expected one saved video, got {comfy_client.output_files(entry)}"
    item = videos[0]
    assert item["type"] == "output"
    path = tmp_path / item["filename"]
    path.write_bytes(comfy_client.view(item["filename"], item.get("subfolder", ""), item["type"]))

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.average_rate == Fraction(FPS), "the output must keep the driving clip's fps"
        assert len(frames) == case["frames"]
        # Paste Back returns full frames: the portrait's size, not the generation size
        assert (frames[0].width, frames[0].height) == (PORTRAIT_SIZE, PORTRAIT_SIZE)
        assert bool(container.streams.audio) == case["audio"], "audio comes from Get Video Components when wired"
