"""Pose and quality measures on hand-placed landmarks and synthetic crops."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from services.detect.quality import brightness, pose_from_landmarks, sharpness

# ArcFace's 112x112 template: a frontal, upright face.
FRONTAL = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def test_frontal_template_is_straight_ahead() -> None:
    yaw, pitch, roll = pose_from_landmarks(FRONTAL)
    assert abs(yaw) < 1.5 and abs(pitch) < 1.5 and abs(roll) < 1


@pytest.mark.parametrize("degrees", [-30, -10, 15, 40])
def test_roll_follows_an_in_plane_rotation(degrees: float) -> None:
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    yaw, pitch, roll = pose_from_landmarks(FRONTAL @ rotation.T)
    assert roll == pytest.approx(degrees, abs=1)
    assert abs(yaw) < 2 and abs(pitch) < 2  # rotation in the image plane is not yaw or pitch


def test_yaw_grows_with_the_nose_moving_sideways() -> None:
    left, right = FRONTAL.copy(), FRONTAL.copy()
    left[2, 0] -= 10
    right[2, 0] += 10
    assert pose_from_landmarks(left)[0] < -15 < 15 < pose_from_landmarks(right)[0]
    profile = FRONTAL.copy()
    profile[2, 0] = profile[0, 0]  # nose in line with one eye: strongly turned, not 90 degrees
    assert -60 < pose_from_landmarks(profile)[0] < -35


def test_sharpness_drops_with_blur_and_brightness_follows_light() -> None:
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert sharpness(cv2.GaussianBlur(crop, (9, 9), 3)) < sharpness(crop) / 10
    assert brightness(np.zeros((112, 112, 3), np.uint8)) == 0
    assert brightness(np.full((112, 112, 3), 255, np.uint8)) == pytest.approx(1)
