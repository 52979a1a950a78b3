"""Run the X-NeMo demo workflow headless through a real ComfyUI and write the video into demo_output/.

    bash scripts/setup.sh && .venv/bin/python scripts/demo.py [--reference PORTRAIT] [--driving VIDEO]

What it does:
1. picks weights: the official files when ComfyUI's `models/x-nemo/` has all four (plus a CLIP ViT-L/14 image encoder
   in `models/clip_vision/` and the SVD img2vid VAE in `models/vae/`); otherwise tiny random weights written by
   `scripts/make_tiny_weights.py` (`write_tiny_models`) (the output is then noise: it only proves the pipeline runs);
2. starts ComfyUI with the pack through `comfy_harness` (the same launcher the server tests use);
3. uploads the reference portrait and the driving video (trimmed to --frames), loads the API workflow
   `example_workflows/api/xnemo_portrait_animation.json`, puts the file names in, queues it and waits;
4. copies the resulting video into demo_output/ and prints where it is;
5. next to it, what is real even on tiny random weights: the face-track preview as a video
   (`xnemo_demo_track_preview.mp4`, the driving frames with the face box and the crop box) and one contact sheet
   (`xnemo_demo_contact_sheet.png`: the reference crop, a few driving frames with their boxes, the output frames).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from importlib import import_module
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_harness  # noqa: E402

ROOT = comfy_harness.ROOT
SHARED_MEDIA = ROOT.parent / "shared" / "media"
DEFAULT_REFERENCE = SHARED_MEDIA / "ref_image.png"
DEFAULT_DRIVING = SHARED_MEDIA / "driving_video.mp4"
DEFAULT_WORKFLOW = ROOT / "example_workflows" / "api" / "xnemo_portrait_animation.json"
DEFAULT_OUTPUT = ROOT / "demo_output"
# loader input id -> official file stem, from the pack's constants (importing them needs no ComfyUI)
XNEMO_ROLES = import_module(f"{comfy_harness.import_pack().__name__}.xnemo_core.pure.constants").CHECKPOINT_FILES
WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".gif", ".webp", ".avi")
TINY_LABEL = "TINY RANDOM WEIGHTS: the output is noise, this only proves the pipeline runs"
TINY_DEFAULTS = {"frames": 16, "steps": 4, "size": 256}
SHOWCASE = {"track_video": "9002", "reference": "9003", "track": "9004", "output": "9005"}  # added output nodes
SHEET_FRAMES = 4
SHEET_HEIGHT = 192


class DemoError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------------------
# Weights


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_EXTENSIONS)


def _pick(folder: Path, wanted: str | None, hints: tuple[str, ...], what: str) -> str:
    files = _weight_files(folder)
    names = [p.relative_to(folder).as_posix() for p in files]
    if wanted:
        if wanted not in names:
            raise DemoError(f"{what} {wanted!r} not found in {folder} (found: {names or 'nothing'})")
        return wanted
    hinted = [n for n in names if any(h in n.lower() for h in hints)]
    if len(hinted) == 1 or (hinted and len(names) > 1):
        return hinted[0]
    if len(names) == 1:
        return names[0]
    raise DemoError(
        f"cannot tell which file in {folder} is the {what} (found: {names or 'nothing'}): "
        f"pass it with --{'clip-vision' if 'CLIP' in what else 'vae'} NAME"
    )


def find_official_weights(models_dir: Path, clip_vision: str | None, vae: str | None) -> dict[str, Any] | None:
    """The official files in ComfyUI's models folder, or None when the four X-NeMo files are not all there."""
    xnemo_dir = models_dir / "x-nemo"
    found: dict[str, str] = {}
    for role, stem in XNEMO_ROLES.items():
        for ext in (".safetensors", ".pth"):  # safetensors preferred when both exist
            if (xnemo_dir / f"{stem}{ext}").is_file():
                found[role] = f"{stem}{ext}"
                break
    if len(found) < len(XNEMO_ROLES):
        return None
    return {
        "x-nemo": found,
        "clip_vision": _pick(
            models_dir / "clip_vision",
            clip_vision,
            ("image_encoder", "vit-l", "vit_l", "vitl"),
            "CLIP ViT-L/14 image encoder",
        ),
        "vae": _pick(models_dir / "vae", vae, ("svd", "img2vid", "stable_video"), "SVD img2vid VAE"),
    }


def _first(value: Any) -> str:
    if isinstance(value, (str, Path)):
        return Path(value).name if Path(value).is_absolute() else str(value)
    if isinstance(value, dict):
        return _first(next(iter(value.values())))
    return _first(list(value)[0])


def write_tiny_weights(models_root: Path) -> dict[str, Any]:
    """Random tiny X-NeMo files + CLIP ViT-L + VAE in `models_root/<folder>/`, from the pack's own generator."""
    sys.path.insert(0, str(comfy_harness.comfyui_dir()))
    import torch

    if not torch.cuda.is_available():  # comfy.model_management (imported by the writer) picks CUDA unless told --cpu
        from comfy.cli_args import args as comfy_args

        comfy_args.cpu = True
    comfy_harness.import_pack()
    try:
        demo_weights = import_module("make_tiny_weights")
    except ImportError as err:
        raise DemoError(
            f"scripts/make_tiny_weights.py is not available ({err}): tiny demo weights cannot be written"
        ) from err
    written = demo_weights.write_tiny_models(models_root)

    xnemo_files = written["x-nemo"]
    names = (
        list(xnemo_files.values())
        if isinstance(xnemo_files, dict)
        else [xnemo_files]
        if isinstance(xnemo_files, str)
        else list(xnemo_files)
    )
    names = [Path(n).name for n in names]
    roles = {}
    for role, stem in XNEMO_ROLES.items():
        match = [n for n in names if Path(n).stem == stem] or [n for n in names if role in n]
        if not match:
            raise DemoError(f"write_tiny_models wrote no file for {role} (wrote {names})")
        roles[role] = match[0]
    return {"x-nemo": roles, "clip_vision": _first(written["clip_vision"]), "vae": _first(written["vae"])}


# ----------------------------------------------------------------------------------------------------------------------
# Media


def trim_video(source: Path, target: Path, frames: int) -> Path:
    """The first `frames` frames of `source` as a new mp4 (same size and fps), so a CPU run stays short."""
    import av

    with av.open(str(source)) as src:
        stream = src.streams.video[0]
        rate = stream.average_rate or 25
        with av.open(str(target), "w") as dst:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            out = dst.add_stream(codec, rate=rate)
            out.width, out.height = stream.codec_context.width, stream.codec_context.height
            out.pix_fmt = "yuv420p"
            count = 0
            for frame in src.decode(stream):
                for packet in out.encode(frame.reformat(format="yuv420p")):
                    dst.mux(packet)
                count += 1
                if count >= frames:
                    break
            for packet in out.encode():
                dst.mux(packet)
    return target


# ----------------------------------------------------------------------------------------------------------------------
# Workflow


def _require(prompt: dict, class_type: str) -> list[str]:
    ids = comfy_harness.node_ids_of(prompt, class_type)
    if not ids:
        raise DemoError(f"the demo workflow has no {class_type} node")
    return ids


def _pick_titled(prompt: dict, ids: list[str], word: str) -> str:
    titled = [i for i in ids if word in prompt[i].get("_meta", {}).get("title", "").lower()]
    return (titled or ids)[0]


def prepare_prompt(
    prompt: dict,
    reference: str,
    driving: str,
    weights: dict[str, Any],
    steps: int | None = None,
    size: int | None = None,
    seed: int | None = None,
) -> dict:
    """Put the uploaded media, the weight file names and any overrides into the API workflow (a copy)."""
    prompt = json.loads(json.dumps(prompt))

    prompt[_pick_titled(prompt, _require(prompt, "LoadImage"), "reference")]["inputs"]["image"] = reference
    video_loaders = [(i, "file") for i in comfy_harness.node_ids_of(prompt, "LoadVideo")]
    video_loaders += [(i, "video") for i in comfy_harness.node_ids_of(prompt, "VHS_LoadVideo")]
    if not video_loaders:
        raise DemoError("the demo workflow has no LoadVideo (or VHS_LoadVideo) node for the driving video")
    node_id, key = video_loaders[0]
    prompt[node_id]["inputs"][key] = driving

    for node_id in _require(prompt, "XNeMoLoader"):
        prompt[node_id]["inputs"].update(weights["x-nemo"])
    for node_id in comfy_harness.node_ids_of(prompt, "CLIPVisionLoader"):
        prompt[node_id]["inputs"]["clip_name"] = weights["clip_vision"]
    for node_id in comfy_harness.node_ids_of(prompt, "XNeMoVAELoader"):
        prompt[node_id]["inputs"]["vae_name"] = weights["vae"]

    for node in prompt.values():
        inputs = node.get("inputs", {})
        if not node.get("class_type", "").startswith("XNeMo"):
            continue
        if steps is not None and isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
        if seed is not None and isinstance(inputs.get("seed"), int):
            inputs["seed"] = seed
        if size is not None and isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int):
            inputs["width"] = inputs["height"] = size
    return prompt


def add_showcase_outputs(prompt: dict) -> dict:
    """Outputs that show the real preprocessing beside the result (a copy of the prompt with nodes SHOWCASE adds):
    Encode Motion's face-track preview as a video at the main video's fps, and previews of the reference crop, the
    track and the output frames for the contact sheet."""
    prompt = json.loads(json.dumps(prompt))
    encode = _require(prompt, "XNeMoEncodeMotion")[0]
    reference = _require(prompt, "XNeMoReferenceCondition")[0]
    create = _require(prompt, "CreateVideo")[0]
    prompt["9001"] = {
        "class_type": "CreateVideo",
        "inputs": {"images": [encode, 1], "fps": prompt[create]["inputs"]["fps"]},
    }
    prompt[SHOWCASE["track_video"]] = {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["9001", 0],
            "filename_prefix": "xnemo_demo/track_preview",
            "format": "mp4",
            "codec": "h264",
        },
    }
    prompt[SHOWCASE["reference"]] = {"class_type": "PreviewImage", "inputs": {"images": [reference, 4]}}
    prompt[SHOWCASE["track"]] = {"class_type": "PreviewImage", "inputs": {"images": [encode, 1]}}
    output_frames = prompt[create]["inputs"]["images"]
    prompt[SHOWCASE["output"]] = {"class_type": "PreviewImage", "inputs": {"images": output_frames}}
    return prompt


def make_contact_sheet(reference_crop, track: list, output: list, tiny: bool):
    """One picture: the reference crop, a few driving frames with their face (green) and crop (cyan) boxes, and the
    output frames at the same times. PIL images in, a PIL image out."""
    from PIL import Image, ImageDraw, ImageFont

    count = min(SHEET_FRAMES, len(track), len(output))
    picks = [round(i * (len(track) - 1) / max(count - 1, 1)) for i in range(count)]
    picks_out = [round(i * (len(output) - 1) / max(count - 1, 1)) for i in range(count)]

    def thumb(image):
        return image.convert("RGB").resize(
            (max(1, round(image.width * SHEET_HEIGHT / image.height)), SHEET_HEIGHT), Image.LANCZOS
        )

    rows = [
        ("reference crop: what X-NeMo animates", [thumb(reference_crop)]),
        ("driving frames: face box (green; red where filled in), crop box (cyan)", [thumb(track[i]) for i in picks]),
        (
            "output frames" + (": TINY RANDOM WEIGHTS, noise by design" if tiny else ""),
            [thumb(output[i]) for i in picks_out],
        ),
    ]
    font = ImageFont.load_default(size=16)
    pad, label = 8, 24
    width = pad + max(sum(t.width + pad for t in thumbs) for _, thumbs in rows)
    sheet = Image.new("RGB", (width, pad + len(rows) * (label + SHEET_HEIGHT + pad)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for text, thumbs in rows:
        draw.text((pad, y + 2), text, fill=(235, 235, 235), font=font)
        x = pad
        for image in thumbs:
            sheet.paste(image, (x, y + label))
            x += image.width + pad
        y += label + SHEET_HEIGHT + pad
    return sheet


# ----------------------------------------------------------------------------------------------------------------------
# Main


def write_showcase(client, files: list[dict], output_dir: Path, tiny: bool) -> list[Path]:
    """The face-track preview video and the contact sheet, from the SHOWCASE outputs of the finished prompt."""
    import io

    from PIL import Image

    def fetch(item):
        return client.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))

    by_node: dict[str, list[dict]] = {}
    for item in files:
        by_node.setdefault(item["node"], []).append(item)
    missing = [role for role, node in SHOWCASE.items() if not by_node.get(node)]
    if missing:
        raise DemoError(f"the workflow finished but did not report the {', '.join(missing)} output(s)")
    track_video = by_node[SHOWCASE["track_video"]][0]
    video = output_dir / f"xnemo_demo_track_preview{Path(track_video['filename']).suffix}"
    video.write_bytes(fetch(track_video))

    def pictures(role):
        return [Image.open(io.BytesIO(fetch(item))) for item in by_node[SHOWCASE[role]]]

    sheet = make_contact_sheet(pictures("reference")[0], pictures("track"), pictures("output"), tiny)
    sheet_path = output_dir / "xnemo_demo_contact_sheet.png"
    sheet.save(sheet_path, optimize=True)
    return [video, sheet_path]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help=f"portrait image (default: {DEFAULT_REFERENCE} if present)")
    parser.add_argument("--driving", type=Path, help=f"driving video of a face (default: {DEFAULT_DRIVING} if present)")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format workflow to run")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="use tiny random weights even if the official ones exist")
    parser.add_argument("--clip-vision", help="file name in models/clip_vision/ (official weights only)")
    parser.add_argument("--vae", help="file name in models/vae/ (official weights only)")
    parser.add_argument("--frames", type=int, help="driving frames to use, 0 = all (default: 16 tiny, all official)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 4 tiny, the workflow's otherwise)")
    parser.add_argument("--size", type=int, help="output width = height (default: 256 tiny, the workflow's otherwise)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the workflow's)")
    parser.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU even when a GPU is available")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the workflow")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary ComfyUI work folder")
    return parser.parse_args(argv)


def _media(path: Path | None, default: Path, flag: str, what: str) -> Path:
    if path is None:
        if not default.is_file():
            raise DemoError(f"no {what} given and {default} does not exist: pass {flag} PATH")
        return default
    if not path.is_file():
        raise DemoError(f"{flag} {path}: no such file")
    return path.resolve()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (
        DemoError,
        comfy_harness.HarnessError,
        comfy_harness.PromptRejected,
        comfy_harness.ExecutionFailed,
        TimeoutError,
    ) as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        log = args.output_dir / "comfyui_demo.log"
        if log.is_file():
            print(f"ComfyUI's log: {log}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    reference = _media(args.reference, DEFAULT_REFERENCE, "--reference", "reference portrait")
    driving = _media(args.driving, DEFAULT_DRIVING, "--driving", "driving video")
    if not args.workflow.is_file():
        raise DemoError(f"demo workflow {args.workflow} not found")
    workflow = json.loads(args.workflow.read_text())
    comfy_dir = comfy_harness.comfyui_dir()

    work = Path(tempfile.mkdtemp(prefix="xnemo-demo-"))
    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        weights = None if args.tiny else find_official_weights(comfy_dir / "models", args.clip_vision, args.vae)
        tiny = weights is None
        if tiny:
            print(f"Official X-NeMo weights not found in {comfy_dir / 'models' / 'x-nemo'}: writing tiny random ones.")
            weights = write_tiny_weights(work / "models")
        frames = args.frames if args.frames is not None else (TINY_DEFAULTS["frames"] if tiny else 0)
        steps = args.steps if args.steps is not None else (TINY_DEFAULTS["steps"] if tiny else None)
        size = args.size if args.size is not None else (TINY_DEFAULTS["size"] if tiny else None)

        if frames > 0:
            driving = trim_video(driving, work / f"driving_{frames}f.mp4", frames)

        import torch

        cpu = args.cpu or tiny or not torch.cuda.is_available()
        print(f"Starting ComfyUI ({comfy_dir}) on the {'CPU' if cpu else 'GPU'} ...")
        server = comfy_harness.start_server(work, comfy_dir=comfy_dir, cpu=cpu)
        client = server.client(timeout=120)
        prompt = add_showcase_outputs(
            prepare_prompt(
                workflow,
                reference=client.upload_image(reference),
                driving=client.upload_image(driving),
                weights=weights,
                steps=steps,
                size=size,
                seed=args.seed,
            )
        )
        print(
            f"Running {args.workflow.name} ({'tiny random weights' if tiny else 'official weights'}, "
            f"{frames or 'all'} driving frames) ..."
        )
        started = time.monotonic()
        entry = client.run(prompt, timeout=args.timeout)
        print(f"Workflow finished in {time.monotonic() - started:.1f}s.")

        files = client.output_files(entry)
        videos = [
            f for f in files if f["filename"].lower().endswith(VIDEO_EXTENSIONS) and f["node"] not in SHOWCASE.values()
        ]
        if not videos:
            raise DemoError(f"the workflow finished but reported no video output: {entry.get('outputs')}")
        written = []
        for item in videos:
            suffix = Path(item["filename"]).suffix
            name = (
                f"xnemo_demo{'_TINY_RANDOM_WEIGHTS' if tiny else ''}{'' if len(written) == 0 else f'_{len(written)}'}"
            )
            target = output_dir / f"{name}{suffix}"
            target.write_bytes(client.view(item["filename"], item.get("subfolder", ""), item.get("type", "output")))
            written.append(target)
        written += write_showcase(client, files, output_dir, tiny)
    finally:
        if server is not None:
            server.stop()
            shutil.copyfile(server.log_path, output_dir / "comfyui_demo.log")
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for path in written:
        print(f"Written: {path}")
    if tiny:
        bar = "!" * (len(TINY_LABEL) + 8)
        print(
            f"\n{bar}\n!!! {TINY_LABEL} !!!\n{bar}\n"
            "Put the official weights in ComfyUI's models/ folders (see README) for a real animation."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
