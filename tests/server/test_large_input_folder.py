"""A large, looping input folder cannot stall ComfyUI: Load Motion's list is asked for at start and on every
/object_info, so it reads one folder level, follows no links and opens only .safetensors headers.

The folder holds 10,000 files and two links back into itself (`self -> .`, `sub/up -> ..`); before the list was
bounded, such a folder kept /object_info from answering (a recursive walk through the links, reading every header).
The bounds asserted here are generous (a loaded 2-core machine); they are not a benchmark.
"""

from __future__ import annotations

import os
import struct
import time

import comfy_harness
import pytest
from motion_samples import motion
from server_graphs import combo_options

from xnemo_pack.xnemo_core.pure.motion_file import save_motion

pytestmark = [pytest.mark.server, pytest.mark.slow]

FILES = 10_000
OBJECT_INFO_WITHIN_S = 10.0
NOT_A_MOTION = struct.pack("<Q", 8) + b"{}      "  # a valid, empty safetensors file


def fill(folder) -> None:
    """10,000 files: pictures, foreign .safetensors, one motion at the top and one in xnemo_motion/, motions deeper
    down and behind links (not listed), and the two loops."""
    (folder / "xnemo_motion").mkdir(parents=True)
    (folder / "sub" / "deeper").mkdir(parents=True)
    one = motion(frames=3)
    save_motion(one, str(folder / "top.safetensors"))
    save_motion(one, str(folder / "xnemo_motion" / "saved.safetensors"))
    save_motion(one, str(folder / "sub" / "deeper" / "buried.safetensors"))
    os.symlink(".", folder / "self")
    os.symlink("..", folder / "sub" / "up")
    os.symlink(folder / "top.safetensors", folder / "linked.safetensors")
    written = 4  # the three motions and the linked one
    for i in range(FILES - written):
        if i % 10 == 0:
            (folder / f"weights_{i:05}.safetensors").write_bytes(NOT_A_MOTION)
        else:
            (folder / f"frame_{i:05}.png").write_bytes(b"\x89PNG")
    assert sum(len(files) for _, _, files in os.walk(folder)) == FILES  # os.walk follows no links by default


def test_start_and_object_info_stay_fast_with_a_large_looping_input_folder(tmp_path_factory):
    work = tmp_path_factory.mktemp("comfyui_large_input")
    fill(work / "input")
    started = time.monotonic()
    server = comfy_harness.start_server(work, comfy_dir=comfy_harness.comfyui_dir(), startup_timeout=240.0)
    try:
        start_s = time.monotonic() - started
        client = server.client(timeout=OBJECT_INFO_WITHIN_S)
        asked = time.monotonic()
        info = client.object_info()  # every node's schema: Load Motion lists its folders again
        object_info_s = time.monotonic() - asked
        asked = time.monotonic()
        load_motion = client.object_info("XNeMoLoadMotion")
        node_info_s = time.monotonic() - asked
        print(
            f"\n10,000-file looping input folder: start-up {start_s:.1f} s (to the first /object_info answer), "
            f"/object_info {object_info_s:.2f} s, /object_info/XNeMoLoadMotion {node_info_s:.3f} s"
        )
        assert "XNeMoLoadMotion" in info and not server.import_failures()
        assert object_info_s < OBJECT_INFO_WITHIN_S and node_info_s < OBJECT_INFO_WITHIN_S
        options = combo_options(load_motion["input"]["required"]["motion_file"])
        assert options == ["top.safetensors", "xnemo_motion/saved.safetensors"]
    finally:
        server.stop()
