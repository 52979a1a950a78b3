"""Convert the diffusers Stable Video Diffusion VAE into the layout core Load VAE builds the temporal decoder from.

    python scripts/convert_svd_vae.py ComfyUI/models/vae/diffusion_pytorch_model.safetensors
    python scripts/convert_svd_vae.py IN.safetensors|IN.bin --out ComfyUI/models/vae/svd_xt_vae.safetensors [--force]

The input is `vae/diffusion_pytorch_model.safetensors` (or `.bin`, read with `torch.load(weights_only=True)`) of
stabilityai/stable-video-diffusion-img2vid or -img2vid-xt: the file the official X-NeMo loads. Core Load VAE misreads
it (ComfyUI 0.3.75 builds a 4x upscaler VAE with almost every weight missing). The output holds the same tensors under
Stability's names (`decoder.mid.block_1.mix_factor`, ...), the names of the VAE inside svd.safetensors, so core Load
VAE builds ComfyUI's temporal VAE from it. X-NeMo Load VAE reads the diffusers file directly, without converting.

Default output: beside the input, `<stem>_comfyui.safetensors`. The output is read back and compared tensor by tensor
before the command succeeds; an existing file is kept unless --force. Exit status 0 on success, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xnemo_core.pure import svd_vae_keys


class ConvertError(RuntimeError):
    pass


def read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is not a plain tensor dict
        raise ConvertError(f"{path}: not readable as a tensors-only checkpoint ({e})") from None
    return sd.get("state_dict", sd)


def convert(source: Path, target: Path, force: bool = False) -> Path:
    if target.exists() and not force:
        raise ConvertError(f"{target} exists; pass --force to replace it")
    sd = svd_vae_keys.strip_checkpoint_prefix(read(source))
    if svd_vae_keys.is_comfy_svd(sd):
        raise ConvertError(f"{source} is already in ComfyUI's layout: load it with Load VAE as it is")
    if not svd_vae_keys.is_diffusers_svd(sd):
        raise ConvertError(
            f"{source} is not a diffusers Stable Video Diffusion VAE (no "
            f"{svd_vae_keys.DIFFUSERS_MARKER}): expected vae/diffusion_pytorch_model.safetensors of "
            f"stable-video-diffusion-img2vid(-xt)"
        )
    try:
        out = {k: v.contiguous() for k, v in svd_vae_keys.diffusers_to_comfy(sd).items()}
    except svd_vae_keys.SVDVaeKeyError as e:
        raise ConvertError(f"{source}: {e}") from None
    partial = target.with_name(target.name + ".partial")
    save_file(out, str(partial), metadata={"format": "pt", "converted_from": "diffusers AutoencoderKLTemporalDecoder"})
    back = load_file(str(partial))
    if back.keys() != out.keys() or any(not torch.equal(back[k], out[k]) or back[k].dtype != out[k].dtype for k in out):
        partial.unlink()
        raise ConvertError(f"{target}: the written file does not read back equal; nothing was replaced")
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="diffusers SVD VAE file (.safetensors or .bin)")
    parser.add_argument("--out", type=Path, help="output file (default: beside the input, <stem>_comfyui.safetensors)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    target = args.out or args.input.with_name(args.input.stem + "_comfyui.safetensors")
    try:
        if not args.input.is_file():
            raise ConvertError(f"{args.input} does not exist")
        print(f"wrote {convert(args.input, target, args.force)}")
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
