"""A photo's analysis: faces, quality and embeddings, from the cache or from detect + embed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import grpc
import numpy as np

from facescore.v1 import cache_pb2, common_pb2, detect_pb2, score_pb2
from services.common.errors import FaceScoreError, Reason
from services.score.cache import AnalysisCache, cache_key
from services.score.clients import InferenceClient
from services.score.storage.layout import ModelIdentity


@dataclass(frozen=True)
class Analysis:
    image: common_pb2.ImageInfo
    faces: list[detect_pb2.DetectedFace]  # largest first, without crops
    embeddings: np.ndarray  # (faces, dim) float32, L2-normalised
    cached: bool

    def face(self, index: int, include_embedding: bool = False) -> score_pb2.AnalyzedFace:
        face = self.faces[index]
        return score_pb2.AnalyzedFace(
            index=index,
            box=face.box,
            detection_score=face.score,
            landmarks=face.landmarks,
            quality=face.quality,
            embedding=self.embeddings[index].tolist() if include_embedding else [],
        )


class Analyzer:
    def __init__(
        self,
        inference: InferenceClient,
        cache: AnalysisCache,
        detector: common_pb2.ModelInfo,
        recognizer: ModelIdentity,
    ) -> None:
        self._inference = inference
        self._cache = cache
        self._recognizer = recognizer
        # Detection output depends on the detector and its input size: both are in the key.
        self._params = f"{detector.name}@{detector.sha256}:{detector.input_width}"

    async def analyze(self, image: bytes, deadline: float) -> Analysis:
        if not image:
            raise FaceScoreError(Reason.EMPTY_IMAGE, "the photo is empty")
        key = cache_key(self._recognizer.model_id, self._params, hashlib.sha256(image).hexdigest())
        cached = await self._cache.get(key)
        if cached is not None:
            return self._from_cache(cached)
        detected = await self._inference.detect(image, deadline)
        crops = [face.crop for face in detected.faces]
        vectors = np.zeros((0, self._recognizer.dim), np.float32)
        if crops:
            embedded = await self._inference.embed(crops, deadline)
            model = embedded.model
            if (model.name, model.sha256) != (self._recognizer.name, self._recognizer.sha256):
                raise FaceScoreError(
                    Reason.EMBEDDING_MODEL_MISMATCH,
                    f"embed now runs {model.name}@{model.sha256[:12]}, but the gallery holds "
                    f"{self._recognizer.name}@{self._recognizer.sha256[:12]} embeddings; restart "
                    "the score service to use the new model's collection",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            vectors = np.array([e.values for e in embedded.embeddings], dtype=np.float32)
        for face in detected.faces:
            face.ClearField("crop")
        analysis = Analysis(detected.image, list(detected.faces), vectors, cached=False)
        await self._cache.set(key, self._to_cache(analysis))
        return analysis

    @staticmethod
    def _to_cache(analysis: Analysis) -> bytes:
        message = cache_pb2.CachedAnalysis(
            image=analysis.image,
            faces=analysis.faces,
            embeddings=[v.astype("<f4").tobytes() for v in analysis.embeddings],
        )
        return message.SerializeToString()

    def _from_cache(self, data: bytes) -> Analysis:
        message = cache_pb2.CachedAnalysis.FromString(data)
        vectors = np.array(
            [np.frombuffer(v, "<f4") for v in message.embeddings], dtype=np.float32
        ).reshape(len(message.embeddings), self._recognizer.dim)
        return Analysis(message.image, list(message.faces), vectors, cached=True)
