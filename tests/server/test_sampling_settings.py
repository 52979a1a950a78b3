"""Sampling settings through a real server: mismatched frame counts, out-of-range settings and edge values.

Every failure must reach the user as a ComfyUI node error (an `execution_error` in /history, or a validation
error from POST /prompt) whose message names the input and the fix, never a traceback from deep inside torch.
Graphs come from server_graphs.pipeline at tiny sizes (128 px, 1-4 frames, 1 step)."""

from __future__ import annotations

import pytest
from server_graphs import execution_error, pipeline, rejection

pytestmark = pytest.mark.server


def test_motion_and_latent_frame_counts_must_match(comfy_client, models, pictures):
    """Motion of 4 frames in the conditioning, a latent cut to 2 frames: refused before sampling."""
    prompt = pipeline(models, pictures, frames=4)
    prompt["cut"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["cond", 2], "batch_index": 0, "length": 2}}
    prompt["sample"]["inputs"]["latent"] = ["cut", 0]
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoSampleAnimation"
    assert (
        "positive carries X-NeMo motion for 4 frames but the latent has 2 frames: connect the latent output of "
        "the same X-NeMo Reference Condition"
    ) in error["exception_message"]


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"steps": 0}, "steps is 0: it must be at least 1"),
        ({"steps": 1000}, "steps / denoise is 1000: the xnemo_ddim schedule has at most 999 steps"),
        ({"context_length": 33}, "context_length is 33: the temporal layers see at most 32 frames at once; use 1..32"),
        ({"context_length": 1}, "context_overlap (4) must be smaller than context_length (1)"),
        ({"context_length": 8, "context_overlap": 8}, "context_overlap (8) must be smaller than context_length (8)"),
        ({"context_length": 8, "context_overlap": 12}, "context_overlap (12) must be smaller than context_length (8)"),
    ],
)
def test_bad_sampling_settings_are_validation_errors(comfy_client, models, pictures, settings, fragment):
    message = rejection(comfy_client, pipeline(models, pictures, sample=settings))
    assert fragment in message and "XNeMoSampleAnimation" in message


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": 1, "cfg": 0.0},
        {"steps": 1, "cfg": 1.0},
        {"steps": 2, "cfg": 2.5, "context_length": 1, "context_overlap": 0},  # one-frame windows, no overlap
        {"steps": 1, "cfg": 2.5, "context_length": 2, "context_overlap": 1},  # windows smaller than the clip
    ],
)
def test_edge_sampling_settings_run(comfy_client, models, pictures, settings):
    entry = comfy_client.run(pipeline(models, pictures, frames=3, sample=settings), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert [f for f in comfy_client.output_files(entry) if f["node"] == "out"]
