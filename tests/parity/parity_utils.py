"""Comparison helpers shared by the parity tests."""

from __future__ import annotations

import re

import torch


def tolerance(manifest: dict, key: str) -> float:
    """The manifest's stated ceiling (`atol X`): the official code's own float32 reordering noise, with margin."""
    return float(re.search(r"atol\s+([0-9.eE+-]+)", manifest["suggested_tolerances"][key]).group(1))


def relative_tolerance(manifest: dict, key: str) -> float:
    """For whole clips: "atol A, or R x absmax": the larger of the two (DDIM amplifies eps into latents of ~35)."""
    m = re.search(r"([0-9.eE+-]+)\s*x\s*absmax", manifest["suggested_tolerances"][key])
    return float(m.group(1))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), f"shape {tuple(a.shape)} vs golden {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def frames_first(x: torch.Tensor) -> torch.Tensor:
    """Official video layout [1, C, F, h, w] -> ComfyUI's frames-as-batch [F, C, h, w]."""
    return x[0].permute(1, 0, 2, 3).contiguous()
