"""ArcFace recognizer through insightface's model class."""

from __future__ import annotations

import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX

from facescore.v1 import common_pb2
from services.common.models import ModelSpec, select_model, verify_model
from services.common.onnx import create_session
from services.embed.settings import EmbedSettings


class FaceRecognizer:
    """Turns aligned crops into L2-normalised float32 embeddings."""

    def __init__(self, settings: EmbedSettings) -> None:
        self.settings = settings
        self.spec: ModelSpec = select_model(settings.model_dir, "recognizer", settings.model_name)
        self._model: ArcFaceONNX | None = None
        self.providers: list[str] = []
        self.dim = 0

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the crops must have."""
        if self._model is None:
            raise RuntimeError("recognizer is not loaded")
        width, height = self._model.input_size
        return int(width), int(height)

    def load(self) -> None:
        path = verify_model(self.settings.model_dir, self.spec)
        session = create_session(path, self.settings)
        self.providers = list(session.get_providers())
        self._model = ArcFaceONNX(model_file=str(path), session=session)
        self.dim = int(session.get_outputs()[0].shape[-1])

    def warm_up(self) -> None:
        width, height = self.input_size
        blank = np.zeros((height, width, 3), np.uint8)
        for size in (1, min(self.settings.max_batch, 8)):
            self.embed([blank] * size)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("recognizer is not loaded")
        features = np.asarray(self._model.get_feat(crops), dtype=np.float32)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        normalized: np.ndarray = features / np.maximum(norms, 1e-12)
        return normalized

    def model_info(self) -> common_pb2.ModelInfo:
        width, height = self.input_size if self._model is not None else (0, 0)
        return common_pb2.ModelInfo(
            name=self.spec.name,
            sha256=self.spec.sha256,
            role=self.spec.role,
            embedding_dim=self.dim,
            providers=self.providers,
            input_width=width,
            input_height=height,
        )
