"""Strict state-dict checks with messages that name every difference (shared by the pure and adapter rooms)."""

from __future__ import annotations

import torch

from .errors import CheckpointError


def check_keys(
    expected: dict[str, torch.Size],
    found: dict[str, torch.Tensor],
    name: str,
    hint: str = "The file is from another model or another version: use the official X-NeMo files, all "
    "four from the same release.",
) -> None:
    """Strict key and shape check with a message naming every difference."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k].shape))
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {listing(unexpected)}")
    if wrong:
        parts.append(
            f"{len(wrong)} with another shape: "
            + listing([f"{k} expected {tuple(expected[k])} found {tuple(found[k].shape)}" for k in wrong])
        )
    raise CheckpointError(f"{name} does not match the X-NeMo architecture ({'; '.join(parts)}). {hint}")


def listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
