"""Faces warped onto ArcFace's 112x112 template, by insightface's face_align."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from insightface.utils import face_align

# insightface's alignment calls a scikit-image method that warns of its own future removal.
# Set here, where every caller imports the alignment from, so that detect's decode workers
# (spawned processes, which inherit none of their parent's filters) stay silent too.
warnings.filterwarnings("ignore", message=".*`estimate` is deprecated.*", category=FutureWarning)

estimate_norm = face_align.estimate_norm


def norm_crop(image_bgr: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The face at `landmarks` warped onto the `size`-pixel template, contiguous."""
    return warp(image_bgr, estimate_norm(landmarks, size), size)


def warp(image_bgr: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """The `size`-pixel crop through `transform` (an `estimate_norm` of the same size), as
    insightface's norm_crop warps it: for a caller that already holds the transform."""
    crop = cv2.warpAffine(image_bgr, transform, (size, size), borderValue=0.0)
    return np.ascontiguousarray(crop)
