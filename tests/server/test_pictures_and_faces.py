"""Awkward pictures and faces through a real server: one frame, RGBA, odd sizes, size limits, no face,
several faces, a face that leaves the frame and comes back.

Every failure must reach the user as a ComfyUI node error (an `execution_error` in /history, or a validation
error from POST /prompt) whose message names the input and the fix, never a traceback from deep inside torch.
Graphs come from server_graphs.pipeline at tiny sizes (128 px, 1-4 frames, 1 step)."""

from __future__ import annotations

import pytest
from server_graphs import SIZE, execution_error, grey_frames, pipeline, rejection

pytestmark = pytest.mark.server


def test_one_frame_clip_runs(comfy_client, models, pictures):
    entry = comfy_client.run(pipeline(models, pictures, frames=1, decode=True), timeout=300)
    images = [f for f in comfy_client.output_files(entry) if f["node"] == "out"]
    assert len(images) == 1
    png = comfy_client.view(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
    assert png[16:24] == SIZE.to_bytes(4, "big") * 2  # PNG IHDR: width, height


def test_rgba_pictures_are_accepted(comfy_client, models, pictures):
    prompt = pipeline(models, pictures, drive="rgba")
    prompt["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["frames", 0], "alpha": ["portrait", 1]}}
    prompt["cond"]["inputs"]["image"] = ["rgba", 0]
    entry = comfy_client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"


def test_odd_sized_pictures_are_cropped_to_the_requested_size(comfy_client, models, pictures):
    prompt = pipeline(models, pictures)
    prompt["portrait"]["inputs"]["image"] = pictures["odd"]  # 123 x 97, both reference and driving frames
    prompt["crop"] = {"class_type": "PreviewImage", "inputs": {"images": ["cond", 4]}}
    entry = comfy_client.run(prompt, timeout=300)
    crop = [f for f in comfy_client.output_files(entry) if f["node"] == "crop"][0]
    png = comfy_client.view(crop["filename"], crop["subfolder"], crop["type"])
    assert png[16:24] == SIZE.to_bytes(4, "big") * 2


@pytest.mark.parametrize(
    "width,height,fragment",
    [
        (100, SIZE, "width is 100: it must be a multiple of 64 between 64 and 2048"),
        (SIZE, 72, "height is 72: it must be a multiple of 64 between 64 and 2048"),
        (4096, SIZE, "width is 4096: it must be a multiple of 64 between 64 and 2048"),
    ],
)
def test_generation_size_limits_are_validation_errors(comfy_client, models, pictures, width, height, fragment):
    message = rejection(comfy_client, pipeline(models, pictures, cond={"width": width, "height": height}))
    assert fragment in message and "XNeMoReferenceCondition" in message


def test_no_face_in_driving_frames(comfy_client, models, pictures):
    prompt = pipeline(models, pictures, drive="blank")
    prompt["blank"] = grey_frames(2)
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoEncodeMotion"
    assert (
        "no face was found in any of the 2 frames; use a clip where a face is clearly visible"
        in error["exception_message"]
    )


def test_no_face_in_reference(comfy_client, models, pictures):
    prompt = pipeline(models, pictures)
    prompt["blank"] = grey_frames(1)
    prompt["cond"]["inputs"]["image"] = ["blank", 0]
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoReferenceCondition"
    assert error["exception_message"].strip() == (
        "no face was found in the reference image: use a portrait where the face is "
        "clearly visible, frontal and at least ~30 px tall"
    )


def test_several_faces_face_index(comfy_client, models, pictures):
    prompt = pipeline(models, pictures)
    prompt["portrait"]["inputs"]["image"] = pictures["two_faces"]
    for node in ("encode", "cond"):
        prompt[node]["inputs"].update(face_index=1, face_order="left_to_right")
    assert comfy_client.run(prompt, timeout=300)["status"]["status_str"] == "success"

    prompt["encode"]["inputs"]["face_index"] = 5
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoEncodeMotion"
    assert (
        "face_index 5 asks for face #6 (left_to_right), but no frame shows more than 2 face(s); set face_index "
        "to 1 or less"
    ) in error["exception_message"]


def test_face_leaving_and_coming_back(comfy_client, models, pictures):
    """Frames: face, blank, blank, face. 'error' lists the gap; 'interpolate' fills it and the clip samples."""
    prompt = pipeline(models, pictures, drive="gap")
    prompt["blank"] = grey_frames(2)
    prompt["face_blank"] = {"class_type": "ImageBatch", "inputs": {"image1": ["portrait", 0], "image2": ["blank", 0]}}
    prompt["gap"] = {"class_type": "ImageBatch", "inputs": {"image1": ["face_blank", 0], "image2": ["portrait", 0]}}
    prompt["encode"]["inputs"]["missing_face"] = "error"
    error = execution_error(comfy_client, prompt)
    assert error["node_type"] == "XNeMoEncodeMotion"
    assert (
        "2 of 4 frames have no face (frames 1-2); set the missing-face policy to 'interpolate' or 'hold'"
        in error["exception_message"]
    )

    prompt["encode"]["inputs"]["missing_face"] = "interpolate"
    assert comfy_client.run(prompt, timeout=300)["status"]["status_str"] == "success"
