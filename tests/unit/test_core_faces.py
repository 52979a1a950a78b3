"""pure/core_faces: core's FACE_LANDMARKS and BOUNDING_BOX payloads read as per-frame detections (torch only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xnemo_pack.xnemo_core.pure import core_faces, face_track


def test_bounding_boxes_per_frame_in_pixels():
    given = core_faces.from_bounding_boxes(
        [
            [{"x": 10, "y": 20, "width": 30, "height": 40, "score": 0.7}, {"x": 0, "y": 0, "width": 0, "height": 5}],
            {"x": 1.5, "y": 2, "width": 3, "height": 4},  # one box: the dict itself
            [],
        ]
    )
    assert given.per_frame == [[(10.0, 20.0, 40.0, 60.0, 0.7)], [(1.5, 2.0, 4.5, 6.0, 1.0)], []]


def test_face_landmarks_use_the_bbox_and_score():
    payload = {
        "frames": [[{"bbox_xyxy": np.array([1, 2, 3, 4], np.float32), "score": 0.6}], []],
        "image_size": (8, 16),
    }
    given = core_faces.from_face_landmarks(payload, 8, 16)
    assert given.per_frame == [[(1.0, 2.0, 3.0, 4.0, 0.6)], []]
    with pytest.raises(core_faces.FaceTrackInputError, match="detected on 16x8 pictures but images are 8x8"):
        core_faces.from_face_landmarks(payload, 8, 8)


@pytest.mark.parametrize(
    "landmarks, boxes, message",
    [
        ([[]], None, "not a FACE_LANDMARKS track"),
        (None, {"x": 0}, "one list of boxes per frame"),
        ({"frames": [[{"score": 1}]]}, None, "frame 0: a face without a 4-value bbox_xyxy"),
    ],
)
def test_bad_payloads_say_what_to_connect(landmarks, boxes, message):
    with pytest.raises(core_faces.FaceTrackInputError, match=message):
        core_faces.given_track(landmarks, boxes, 8, 8)


def test_tracking_follows_the_given_face_and_fills_gaps():
    frames = torch.zeros(4, 32, 32, 3)
    left = {"x": 2, "y": 2, "width": 8, "height": 8}
    right = {"x": 20, "y": 2, "width": 10, "height": 10}
    given = core_faces.from_bounding_boxes([[left, right], [right], [], [left, right]])
    track = face_track.track_face(frames, given, face_index=0, index_mode="largest", missing="interpolate")
    assert track.found.tolist() == [True, True, False, True]
    assert track.boxes[:, 0].tolist() == [20.0, 20.0, 20.0, 20.0]  # the largest face, never the other one
    with pytest.raises(core_faces.FaceTrackInputError, match="has 4 frames but images has 3"):
        face_track.track_face(frames[:3], given)
