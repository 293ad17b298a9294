"""ArcFace recognizer through insightface's model class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from insightface.model_zoo.arcface_onnx import ArcFaceONNX

from services.common.model_base import OnnxModel
from services.common.onnx import ShapeProfile, input_dims
from services.embed.batcher import batch_buckets
from services.embed.settings import EmbedSettings


class FaceRecognizer(OnnxModel):
    """The manifest's recognizer: aligned crops in, L2-normalised float32 embeddings out."""

    role = "recognizer"
    settings: EmbedSettings

    def __init__(self, settings: EmbedSettings) -> None:
        super().__init__(settings)
        self._model: ArcFaceONNX | None = None
        self.dim = 0

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the crops must have."""
        if self._model is None:
            raise RuntimeError("recognizer is not loaded")
        width, height = self._model.input_size
        return int(width), int(height)

    def shape_profile(self, path: Path) -> ShapeProfile:
        # The crop size is the file's; the batch runs from 1 to max_batch.
        _, channels, height, width = input_dims(path)
        crop = (int(channels), int(height), int(width))
        largest = (self.settings.max_batch, *crop)
        return ShapeProfile((1, *crop), largest, largest)

    def _wrap(self, path: Path, session: ort.InferenceSession) -> None:
        self._model = ArcFaceONNX(model_file=str(path), session=session)
        self.dim = int(session.get_outputs()[0].shape[-1])

    def warm_up(self) -> None:
        width, height = self.input_size
        blank = np.zeros((height, width, 3), np.uint8)
        for size in batch_buckets(self.settings.max_batch):
            self.embed([blank] * size)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("recognizer is not loaded")
        with self.running():
            features = np.asarray(self._model.get_feat(crops), dtype=np.float32)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        normalized: np.ndarray = features / np.maximum(norms, 1e-12)
        return normalized

    def _describe(self) -> dict[str, Any]:
        width, height = self.input_size if self._model is not None else (0, 0)
        return {"embedding_dim": self.dim, "input_width": width, "input_height": height}
