"""Face quality measures: small pure functions over landmarks and the aligned crop."""

from __future__ import annotations

import math

import cv2
import numpy as np

from facescore.v1 import common_pb2

# Vertical position of the nose between the eyes (0) and the mouth (1) in ArcFace's
# 112x112 template: a frontal face sits at this ratio, so pitch is measured from it.
_FRONTAL_NOSE_RATIO = (71.7366 - 51.6) / (92.28 - 51.6)


def pose_from_landmarks(landmarks: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch and roll in degrees, estimated from the five landmarks.

    A coarse geometric estimate (no 3D model): roll from the eye line, yaw from where
    the nose sits between the eyes, pitch from where it sits between eyes and mouth.
    Good enough to gate enrollment on frontal faces; not a pose estimator.
    """
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks.astype(np.float64)
    dx, dy = right_eye - left_eye
    roll = math.degrees(math.atan2(dy, dx))
    # Undo the roll so the remaining measures are along the face's own axes.
    angle = -math.atan2(dy, dx)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    le, re, no, ml, mr = (rot @ p for p in (left_eye, right_eye, nose, mouth_left, mouth_right))
    to_left, to_right = no[0] - le[0], re[0] - no[0]
    span = to_left + to_right
    yaw_ratio = (to_left - to_right) / span if abs(span) > 1e-6 else 0.0
    # Turning the head by yaw moves the nose tip by depth*sin(yaw) and the eyes by
    # half-span*cos(yaw); with nose depth about half the eye span, the ratio is tan(yaw).
    yaw = math.degrees(math.atan(yaw_ratio))
    eye_y, mouth_y = (le[1] + re[1]) / 2, (ml[1] + mr[1]) / 2
    height = mouth_y - eye_y
    nose_ratio = (no[1] - eye_y) / height if abs(height) > 1e-6 else _FRONTAL_NOSE_RATIO
    pitch = math.degrees(math.asin(float(np.clip((nose_ratio - _FRONTAL_NOSE_RATIO) * 2, -1, 1))))
    return yaw, pitch, roll


def sharpness(crop_bgr: np.ndarray) -> float:
    """Variance of the Laplacian: blur flattens edges and lowers it."""
    gray = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def brightness(crop_bgr: np.ndarray) -> float:
    """Mean luminance of the crop, 0 (black) to 1 (white)."""
    return float(cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY).mean() / 255.0)


def face_quality(
    box: np.ndarray, landmarks: np.ndarray, crop_bgr: np.ndarray
) -> common_pb2.FaceQuality:
    yaw, pitch, roll = pose_from_landmarks(landmarks)
    width, height = float(box[2] - box[0]), float(box[3] - box[1])
    return common_pb2.FaceQuality(
        face_size_px=min(width, height),
        inter_eye_px=float(np.linalg.norm(landmarks[1] - landmarks[0])),
        sharpness=sharpness(crop_bgr),
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        brightness=brightness(crop_bgr),
    )
