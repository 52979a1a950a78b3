"""Sliding context windows: which frames each window of each step holds, and how many windows a run makes.

The one source of window counts: the sampler, its progress bar, the frontend readout (through the pack's route) and
the tests all use these functions. Pure room: torch only (for the seeded offsets).
"""

from __future__ import annotations

import torch

OFFSET_MODES = ("seeded", "none")


def context_windows(
    frames: int, length: int, overlap: int, offset: int = 0, closed_loop: bool = True
) -> list[list[int]]:
    """Frame indices of each window of one step.

    Closed loop (official "uniform" schedule): starts 0, L-O, 2(L-O), ... < N, every index shifted by `offset` and
    wrapped mod N (so the last window joins the clip's end to its start). Open loop: no wrap; the last window ends at
    the last frame and `offset` moves the inner boundaries.
    """
    if frames <= length:
        return [list(range(frames))]
    stride = length - overlap
    if closed_loop:
        return [[(e + offset) % frames for e in range(j, j + length)] for j in range(0, frames, stride)]
    shift = offset % stride
    starts = sorted({0, *range(shift, frames - length, stride), frames - length})
    return [list(range(s, s + length)) for s in starts]


def frames_per_call(frames: int, length: int) -> int:
    """Frames one UNet call sees: the whole clip up to one window, never more. Memory is planned for this many
    frames (times the CFG rows), so the plan stays the same from one window to a thousand frames."""
    return min(frames, length)


def window_offsets(seed: int, steps: int, length: int, mode: str) -> list[int]:
    """One offset per step in [0, length): drawn from the seed, so a seed reproduces a clip bit for bit."""
    if mode == "none":
        return [0] * steps
    if mode != "seeded":
        raise ValueError(f"offset mode must be one of {OFFSET_MODES}, got {mode!r}")
    g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randint(0, max(length, 1), (steps,), generator=g).tolist()


def window_count(frames: int, length: int, overlap: int, offset: int = 0, closed_loop: bool = True) -> int:
    """`len(context_windows(...))` by arithmetic, without building a window (tests/unit/test_windows.py checks the two
    agree), so a count costs the same for a hundred frames as for a hundred thousand."""
    if frames <= length:
        return 1
    stride = length - overlap
    if closed_loop:
        return -(-frames // stride)  # starts 0, stride, 2 stride, ... < frames
    last = frames - length  # the last window's start, never among the inner starts (range stops before it)
    shift = offset % stride
    inner = -(-(last - shift) // stride) if shift < last else 0  # len(range(shift, last, stride))
    return inner + (shift != 0) + 1  # + the first window (when the inner starts miss 0) + the last one


def windows_per_step(frames: int, length: int, overlap: int, offsets: list[int], closed_loop: bool = True) -> list[int]:
    """Number of windows of each step. Closed loop: the same for every offset. Open loop: the offset moves the inner
    boundaries, so one step may run one window more than another (50 frames at 24/4: 3 or 4)."""
    return [window_count(frames, length, overlap, offset, closed_loop) for offset in offsets]


def window_summary(
    frames: int, length: int, overlap: int, closed_loop: bool, steps: int, seed: int, offset_mode: str
) -> dict:
    """Windows of a whole run as the sampler will run them (for the frontend readout): fewest and most per step and
    the total over all steps (UNet passes per CFG branch). Closed loop: one count for every offset, so no offset is
    drawn; open loop: one count per step, by arithmetic (`window_count`)."""
    if closed_loop:
        per_step = [window_count(frames, length, overlap)]
        total = per_step[0] * steps
    else:
        per_step = windows_per_step(frames, length, overlap, window_offsets(seed, steps, length, offset_mode), False)
        total = sum(per_step)
    return {
        "frames": frames,
        "min_per_step": min(per_step),
        "max_per_step": max(per_step),
        "total": total,
        "steps": steps,
        "closed_loop": closed_loop,
    }
