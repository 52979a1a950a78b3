"""The pack's HTTP route: window counts for Sample Animation's readout, from the sampler's own planner
(xnemo_core/pure/windows), so the frontend never re-derives them.

The handler runs on ComfyUI's event loop, which also serves the UI and its websocket: the counts are arithmetic
(`window_count`), the work is capped (frames x steps), and what remains runs in a worker thread, so no query can
hold the loop."""

from __future__ import annotations

import asyncio
import functools

from aiohttp import web

from ..xnemo_core.pure.constants import MAX_FRAMES, MAX_STEPS, TEMPORAL_MAX_FRAMES
from ..xnemo_core.pure.windows import OFFSET_MODES, window_summary

LIMITS = {
    "frames": (1, MAX_FRAMES),
    "length": (1, TEMPORAL_MAX_FRAMES),
    "overlap": (0, TEMPORAL_MAX_FRAMES - 1),
    "steps": (1, MAX_STEPS),
    "seed": (0, 2**64 - 1),
}
# Open loop counts one step at a time; the cap bounds a query's work whatever else changes (10,000 frames at the most
# steps, or 100,000 frames at 100 steps).
MAX_FRAME_STEPS = 10_000_000


def parse_window_query(query) -> dict:
    """Query string -> window_summary arguments; ValueError with the field name for anything off."""
    values = {}
    for name, (low, high) in LIMITS.items():
        try:
            value = int(query[name])
        except (KeyError, ValueError):
            raise ValueError(f"{name} must be an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{name} must be in {low}..{high}")
        values[name] = value
    if values["overlap"] >= values["length"] and values["frames"] > values["length"]:
        raise ValueError("overlap must be below length")
    work = values["frames"] * values["steps"]
    if work > MAX_FRAME_STEPS:
        raise ValueError(
            f"frames x steps is {work:,}, above the readout's limit of {MAX_FRAME_STEPS:,}: the sampler still runs, "
            "lower steps or frames to see the count"
        )
    mode = query.get("offset_mode", "seeded")
    if mode not in OFFSET_MODES:
        raise ValueError(f"offset_mode must be one of {OFFSET_MODES}")
    return dict(
        frames=values["frames"],
        length=values["length"],
        overlap=values["overlap"],
        closed_loop=query.get("closed_loop", "true") != "false",
        steps=values["steps"],
        seed=values["seed"],
        offset_mode=mode,
    )


async def windows_route(request: web.Request) -> web.Response:
    try:
        arguments = parse_window_query(request.rel_url.query)
    except ValueError as err:
        return web.json_response({"error": str(err)}, status=400)
    loop = asyncio.get_running_loop()
    summary = await loop.run_in_executor(None, functools.partial(window_summary, **arguments))
    return web.json_response(summary)


def register_routes() -> None:
    """Add the route to the running ComfyUI server (no server, as in in-process tests: nothing to do)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None or getattr(instance, "_xnemo_routes", False):
        return
    instance.routes.get("/xnemo/windows")(windows_route)
    instance._xnemo_routes = True
