"""Window planning (xnemo_core/pure/windows): which frames each window holds and how many windows a run makes."""

from __future__ import annotations

import pytest

from xnemo_pack.xnemo_core.pure.windows import (
    context_windows,
    window_count,
    window_offsets,
    window_summary,
    windows_per_step,
)


@pytest.mark.parametrize("frames,length,overlap", [(45, 24, 4), (230, 24, 4), (50, 16, 0), (33, 8, 7)])
@pytest.mark.parametrize("closed", [True, False])
@pytest.mark.parametrize("offset", [0, 3, 11, 23])
def test_windows_cover_every_frame_with_full_length_windows(frames, length, overlap, closed, offset):
    windows = context_windows(frames, length, overlap, offset, closed)
    assert all(len(w) == length for w in windows)
    assert {f for w in windows for f in w} == set(range(frames))
    if not closed:
        assert all(w == list(range(w[0], w[0] + length)) for w in windows)  # no wrap in open loop


def test_closed_loop_is_the_official_uniform_schedule():
    # 45 frames, 24/4: starts 0, 20, 40 shifted by the offset, wrapping past the end
    windows = context_windows(45, 24, 4, offset=5, closed_loop=True)
    assert [w[0] for w in windows] == [5, 25, 0]
    assert windows[2][:5] == [0, 1, 2, 3, 4] and windows[1][-1] == 3  # 25..44 then 0..3
    assert windows_per_step(45, 24, 4, [0, 5, 23], True) == [3, 3, 3]


def test_open_loop_count_depends_on_the_offset():
    # 50 frames at 24/4: the inner boundaries move with the offset, giving 3 or 4 windows per step
    counts = windows_per_step(50, 24, 4, list(range(20)), closed_loop=False)
    assert set(counts) == {3, 4}
    assert counts[0] == 3 and counts[5] == 4


def test_short_clips_run_one_window():
    assert context_windows(16, 24, 4, 7, True) == [list(range(16))]
    assert windows_per_step(24, 24, 4, [0, 9], False) == [1, 1]


def test_offsets_are_seeded_and_in_range():
    a = window_offsets(1234, 35, 24, "seeded")
    assert a == window_offsets(1234, 35, 24, "seeded") and a != window_offsets(1235, 35, 24, "seeded")
    assert all(0 <= o < 24 for o in a) and len(a) == 35
    assert window_offsets(1234, 5, 24, "none") == [0] * 5
    with pytest.raises(ValueError, match="offset mode"):
        window_offsets(0, 5, 24, "random")


def test_summary_totals_the_run_own_offsets():
    s = window_summary(50, 24, 4, False, 20, 3, "seeded")
    per_step = windows_per_step(50, 24, 4, window_offsets(3, 20, 24, "seeded"), False)
    assert s["total"] == sum(per_step) and (s["min_per_step"], s["max_per_step"]) == (min(per_step), max(per_step))
    assert window_summary(230, 24, 4, True, 35, 0, "seeded")["total"] == 12 * 35


FRAMES = (1, 2, 3, 5, 8, 13, 23, 24, 25, 31, 32, 33, 45, 50, 64, 97, 230)
LENGTHS = (1, 2, 3, 4, 7, 8, 16, 23, 24, 31, 32)


@pytest.mark.parametrize("closed", [True, False])
def test_window_count_is_the_planner_count(closed):
    """The arithmetic count (what the readout route and the progress bar use) = the planner's windows, for every
    overlap and every offset a step can draw, short clips and clips one frame past a window included."""
    checked = 0
    for frames in FRAMES:
        for length in LENGTHS:
            for overlap in range(length):
                for offset in range(length + 3):
                    planned = len(context_windows(frames, length, overlap, offset, closed))
                    assert window_count(frames, length, overlap, offset, closed) == planned, (
                        frames,
                        length,
                        overlap,
                        offset,
                        closed,
                    )
                    checked += 1
    assert checked > 40_000


@pytest.mark.parametrize("closed", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 35, 1000])
@pytest.mark.parametrize(
    "frames,length,overlap", [(1, 24, 4), (24, 24, 4), (25, 24, 4), (50, 24, 4), (97, 8, 7), (230, 16, 0)]
)
def test_summary_equals_the_planner_over_the_whole_run(frames, length, overlap, closed, steps):
    """window_summary (closed loop: one count times the steps, no window built) = counting the windows the sampler
    plans for each step with that step's seeded offset."""
    offsets = window_offsets(7, steps, length, "seeded")
    planned = [len(context_windows(frames, length, overlap, o, closed)) for o in offsets]
    got = window_summary(frames, length, overlap, closed, steps, 7, "seeded")
    assert got == {
        "frames": frames,
        "min_per_step": min(planned),
        "max_per_step": max(planned),
        "total": sum(planned),
        "steps": steps,
        "closed_loop": closed,
    }


def test_summary_of_a_long_clip_is_arithmetic():
    """100,000 frames in 32-frame windows overlapping by 31 (the readout's largest clip): counted, not planned."""
    got = window_summary(100_000, 32, 31, True, 1000, 0, "seeded")
    assert got["min_per_step"] == got["max_per_step"] == 100_000 and got["total"] == 100_000_000
    assert window_summary(100_000, 32, 31, False, 1000, 0, "seeded")["max_per_step"] == 100_000 - 32 + 1
