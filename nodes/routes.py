"""The pack's HTTP route: window counts for Sample Animation's readout, from the sampler's own planner
(xnemo_core/pure/windows), so the frontend never re-derives them."""

from __future__ import annotations

from aiohttp import web

from ..xnemo_core.pure.windows import OFFSET_MODES, window_summary

LIMITS = {"frames": (1, 100_000), "length": (1, 32), "overlap": (0, 31), "steps": (1, 999), "seed": (0, 2**64 - 1)}


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
        return web.json_response(window_summary(**parse_window_query(request.rel_url.query)))
    except ValueError as err:
        return web.json_response({"error": str(err)}, status=400)


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
