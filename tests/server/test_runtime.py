"""Runtime behaviour of a real server: interrupt then a normal run, /free then a reload, and no connection to
anything but loopback.

Every failure must reach the user as a ComfyUI node error (an `execution_error` in /history, or a validation
error from POST /prompt) whose message names the input and the fix, never a traceback from deep inside torch.
Graphs come from server_graphs.pipeline at tiny sizes (128 px, 1-4 frames, 1 step)."""

from __future__ import annotations

import ipaddress
import time

import psutil
import pytest
from server_graphs import pipeline

pytestmark = pytest.mark.server


def test_interrupt_during_sampling_then_a_normal_run(comfy_client, models, pictures):
    comfy_client.run(pipeline(models, pictures), timeout=300)  # everything but the sampler is cached from here
    prompt_id = comfy_client.queue_prompt(pipeline(models, pictures, sample={"steps": 999, "seed": 1}))
    deadline = time.monotonic() + 120
    entry = None
    while time.monotonic() < deadline:
        running = [item[1] for item in comfy_client.get_json("/queue")["queue_running"]]
        entry = comfy_client.history(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            break
        if prompt_id in running:
            comfy_client.interrupt()  # again every poll: an interrupt that lands before execution starts is reset
        time.sleep(0.5)
    assert entry is not None, "the interrupted prompt never finished"
    status = entry["status"]
    assert status["status_str"] == "error" and not status["completed"]
    interrupted = [data for kind, data in status["messages"] if kind == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_type"] == "XNeMoSampleAnimation", status["messages"][-1]
    assert not [kind for kind, _ in status["messages"] if kind == "execution_error"]

    entry = comfy_client.run(pipeline(models, pictures, sample={"seed": 2}), timeout=300)
    assert entry["status"]["status_str"] == "success"


def test_free_unloads_then_a_run_reloads(comfy_client, models, pictures):
    prompt = pipeline(models, pictures, sample={"seed": 11})
    comfy_client.run(prompt, timeout=300)
    comfy_client.free(unload_models=True, free_memory=True)
    # The worker applies /free after its current queue item; a tiny core prompt makes sure that has happened.
    comfy_client.run(
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        },
        timeout=60,
    )
    entry = comfy_client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    cached = [data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
    assert cached and "load" not in cached[0], f"Load X-NeMo was not re-run after /free: cached {cached}"


def test_server_opens_no_outside_connections(comfy_client, comfy_server, models, pictures):
    comfy_client.run(pipeline(models, pictures, sample={"seed": 21}), timeout=300)
    server = psutil.Process(comfy_server.process.pid)
    outside = []
    for proc in [server, *server.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            for address in (conn.laddr, conn.raddr):
                if address and not ipaddress.ip_address(address.ip).is_loopback:
                    outside.append((proc.pid, conn.laddr, conn.raddr, conn.status))
    assert outside == []
