"""/xnemo/windows (nodes/routes.py) in-process on aiohttp's test server: limits, the frames x steps cap, one steps limit
shared with Sample Animation, and a handler that leaves ComfyUI's event loop free while it works."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from xnemo_pack.nodes import routes
from xnemo_pack.nodes.sample import XNeMoSampleAnimation
from xnemo_pack.xnemo_core.pure.constants import MAX_STEPS
from xnemo_pack.xnemo_core.pure.windows import window_summary


def ask(*queries: str, during=None) -> list[tuple[int, dict]]:
    """GET /xnemo/windows?<query> for each query on a fresh aiohttp app; `during` runs beside the requests."""

    async def run():
        app = web.Application()
        app.router.add_get("/xnemo/windows", routes.windows_route)
        async with TestClient(TestServer(app)) as client:

            async def one(query):
                response = await client.get(f"/xnemo/windows?{query}")
                return response.status, await response.json()

            tasks = [one(q) for q in queries] + ([during()] if during else [])
            return (await asyncio.gather(*tasks))[: len(queries)]

    return asyncio.run(run())


def test_answers_are_the_planner_summary():
    [(status, body)] = ask("frames=50&length=24&overlap=4&steps=20&closed_loop=false&seed=3&offset_mode=seeded")
    assert status == 200 and body == window_summary(50, 24, 4, False, 20, 3, "seeded")


def test_sample_animation_and_the_route_share_one_steps_limit():
    steps = next(i for i in XNeMoSampleAnimation.define_schema().inputs if i.id == "steps")
    assert steps.max == MAX_STEPS == routes.LIMITS["steps"][1] == 1000
    (ok, body), (refused, error) = ask(
        "frames=40&length=24&overlap=4&steps=1000&seed=0", "frames=40&length=24&overlap=4&steps=1001&seed=0"
    )
    assert ok == 200 and body["total"] == 2 * 1000
    assert refused == 400 and error == {"error": "steps must be in 1..1000"}


def test_frames_times_steps_is_capped_with_a_clear_error():
    # the query from the issue: 100,000 frames, windows of 32 overlapping by 31, 999 steps
    [(status, body)] = ask("frames=100000&length=32&overlap=31&steps=999&seed=0&closed_loop=false")
    assert status == 400
    assert body["error"] == (
        "frames x steps is 99,900,000, above the readout's limit of 10,000,000: the sampler still runs, "
        "lower steps or frames to see the count"
    )
    # at the cap it answers, open loop included (10,000 frames x 1,000 steps), with the planner's numbers
    [(status, body)] = ask("frames=10000&length=32&overlap=31&steps=1000&seed=5&closed_loop=false")
    assert status == 200 and body == window_summary(10_000, 32, 31, False, 1000, 5, "seeded")


def test_the_event_loop_keeps_running_while_a_summary_is_computed(monkeypatch):
    """A slow summary (stand-in: 0.6 s of blocking work) runs in a worker thread: the loop keeps ticking meanwhile.
    Run on the loop itself, the ticker would stop for the whole 0.6 s."""

    def slow_summary(**kwargs):
        time.sleep(0.6)
        return window_summary(**kwargs)

    monkeypatch.setattr(routes, "window_summary", slow_summary)
    gaps = []

    async def ticker():
        last = time.monotonic()
        for _ in range(40):  # 0.8 s or more: covers the request from its start
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    [(status, _)] = ask("frames=50&length=24&overlap=4&steps=20&seed=3", during=ticker)
    assert status == 200
    assert max(gaps) < 0.3, gaps


@pytest.mark.parametrize(
    "query, error",
    [
        ("frames=0&length=24&overlap=4&steps=20&seed=0", "frames must be in 1..100000"),
        ("frames=50&length=33&overlap=4&steps=20&seed=0", "length must be in 1..32"),
        ("frames=50&length=24&overlap=24&steps=20&seed=0", "overlap must be below length"),
        ("frames=50&length=24&overlap=4&steps=x&seed=0", "steps must be an integer"),
        ("frames=50&length=24&overlap=4&steps=20&seed=0&offset_mode=random", "offset_mode must be one of"),
    ],
)
def test_bad_queries_say_which_field(query, error):
    [(status, body)] = ask(query)
    assert status == 400 and body["error"].startswith(error)
