"""Faces warped onto ArcFace's 112x112 template, by insightface's face_align."""

from __future__ import annotations

import warnings

import numpy as np
from insightface.utils import face_align

# insightface's alignment calls a scikit-image method that warns of its own future removal.
# Set here, where every caller imports the alignment from, so that detect's decode workers
# (spawned processes, which inherit none of their parent's filters) stay silent too.
warnings.filterwarnings("ignore", message=".*`estimate` is deprecated.*", category=FutureWarning)

estimate_norm = face_align.estimate_norm


def norm_crop(image_bgr: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The face at `landmarks` warped onto the `size`-pixel template, contiguous."""
    return np.ascontiguousarray(face_align.norm_crop(image_bgr, landmarks, image_size=size))
