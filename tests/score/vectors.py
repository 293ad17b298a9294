"""Synthetic embeddings for the storage tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def unit(rows: np.ndarray, dtype: npt.DTypeLike = None) -> np.ndarray:
    """`rows` scaled to length 1 along the last axis, in `dtype` (default: theirs)."""
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normalised if dtype is None else normalised.astype(dtype)
