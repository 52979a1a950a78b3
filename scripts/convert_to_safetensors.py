"""Convert the official X-NeMo .pth files to .safetensors, keeping every key name, dtype and value.

    .venv/bin/python scripts/convert_to_safetensors.py ComfyUI/models/x-nemo            # every .pth in the folder
    .venv/bin/python scripts/convert_to_safetensors.py a.pth b.pth --out DIR [--force]

Each file is read with `xnemo_core.adapters.checkpoint.load_state_dict_file` (`torch.load(weights_only=True)`: a pickle
that would import or run code is refused), written with `safetensors.torch.save_file` beside its input or into --out,
read back and compared tensor by tensor (keys, dtypes, shapes, values) before it replaces anything. An existing output
is left alone unless --force. Exit status 0 when every file converted, 1 otherwise. Load X-NeMo accepts the results
under the same names (`xnemo_denoising_unet.safetensors`, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xnemo_core.adapters.checkpoint import PICKLE_SUFFIXES, identify, load_state_dict_file  # noqa: E402
from xnemo_core.pure.constants import CHECKPOINT_FILES  # noqa: E402
from xnemo_core.pure.errors import CheckpointError  # noqa: E402


class ConvertError(RuntimeError):
    pass


def inputs_of(paths: list[Path]) -> list[Path]:
    """The pickle checkpoints named, or found directly inside the folders named."""
    found = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
            if not inside:
                raise ConvertError(f"{path} holds no {'/'.join(PICKLE_SUFFIXES)} files")
            found += inside
        elif path.is_file():
            if path.suffix.lower() not in PICKLE_SUFFIXES:
                raise ConvertError(f"{path} is not a {'/'.join(PICKLE_SUFFIXES)} file")
            found.append(path)
        else:
            raise ConvertError(f"{path} does not exist")
    return found


def target_of(source: Path, out_dir: Path | None) -> Path:
    return (out_dir or source.parent) / (source.stem + ".safetensors")


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, none sharing memory with another (save_file refuses shared or strided storage)."""
    seen, out = set(), {}
    for key, tensor in sd.items():
        tensor = tensor.contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def verify(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Read `path` back one tensor at a time and compare it with `sd` exactly."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        if keys != set(sd):
            missing, extra = sorted(set(sd) - keys), sorted(keys - set(sd))
            raise ConvertError(f"{path.name} read back with other keys (missing {missing[:5]}, extra {extra[:5]})")
        for key in sd:
            back, want = f.get_tensor(key), sd[key]
            if back.dtype != want.dtype or back.shape != want.shape or not torch.equal(back, want):
                raise ConvertError(
                    f"{path.name}: {key} reads back differently ({back.dtype} {tuple(back.shape)} "
                    f"vs {want.dtype} {tuple(want.shape)})"
                )


def convert(source: Path, target: Path, force: bool = False) -> dict[str, torch.Tensor]:
    """Convert one file; returns the state dict that was written. Raises ConvertError/CheckpointError."""
    import safetensors.torch

    if target.exists() and not force:
        raise ConvertError(f"{target} exists; pass --force to overwrite it")
    sd = load_state_dict_file(source)
    data = _unshared(sd)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        safetensors.torch.save_file(data, str(partial), metadata={"format": "pt", "converted_from": source.name})
        verify(sd, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return sd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help=".pth files, or folders whose .pth files to convert")
    parser.add_argument("--out", type=Path, help="folder for the .safetensors files (default: beside each input)")
    parser.add_argument("--force", action="store_true", help="overwrite existing .safetensors files")
    args = parser.parse_args(argv)
    try:
        sources = inputs_of(args.paths)
        targets = [target_of(s, args.out) for s in sources]
        if len(set(targets)) != len(targets):
            raise ConvertError("two inputs would be written to the same .safetensors file; convert them separately")
        existing = [t for t in targets if t.exists()]
        if existing and not args.force:  # refuse before converting anything
            raise ConvertError(f"{', '.join(map(str, existing))} exist(s); pass --force to overwrite")
        for source, target in zip(sources, targets):
            sd = convert(source, target, force=args.force)
            kind = identify(sd)
            label = CHECKPOINT_FILES.get(kind, "not an X-NeMo file")
            params = sum(v.numel() for v in sd.values())
            print(f"{source} -> {target}: {len(sd)} tensors, {params / 1e6:.1f}M values, verified ({label})")
    except (ConvertError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
