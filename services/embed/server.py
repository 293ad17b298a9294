"""Embed gRPC service."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from facescore.v1 import common_pb2, embed_pb2, embed_pb2_grpc
from services.common.errors import FaceScoreError, Reason
from services.common.logging import configure_logging
from services.common.onnx import CPU
from services.common.server import serve
from services.embed.batcher import Batcher
from services.embed.recognizer import FaceRecognizer
from services.embed.settings import EmbedSettings


class EmbedService(embed_pb2_grpc.EmbedServiceServicer):
    service_name = embed_pb2.DESCRIPTOR.services_by_name["EmbedService"].full_name

    def __init__(self, settings: EmbedSettings) -> None:
        self.settings = settings
        self.recognizer = FaceRecognizer(settings)
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="embed")
        self._batcher: Batcher | None = None

    def register(self, server: grpc.aio.Server) -> None:
        embed_pb2_grpc.add_EmbedServiceServicer_to_server(self, server)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.recognizer.load)
        await loop.run_in_executor(self._pool, self.recognizer.warm_up)
        on_cpu = self.recognizer.providers == [CPU]
        batcher = Batcher(
            self.recognizer.embed,
            self._pool,
            model=self.recognizer.spec.name,
            max_batch=self.settings.max_batch,
            max_delay_s=self.settings.max_batch_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            # Shapes cost a GPU provider (cuDNN's search, TensorRT engines), not the CPU;
            # the CPU's cost per crop does not fall with the batch, a GPU's does.
            pad_to_buckets=not on_cpu,
            workers=self.settings.workers,
            spread=on_cpu,
        )
        batcher.start()
        self._batcher = batcher

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()
        self._pool.shutdown(wait=True)

    def details(self) -> dict[str, Any]:
        info = self.recognizer.model_info()
        return {
            "model": {"name": info.name, "sha256": info.sha256, "role": info.role},
            "providers": list(info.providers),
            "embedding_dim": info.embedding_dim,
            "max_batch": self.settings.max_batch,
            "max_batch_delay_ms": self.settings.max_batch_delay_ms,
        }

    async def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ModelInfo:
        self._require_ready()
        return self.recognizer.model_info()

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        batcher = self._require_ready()
        if len(request.crops) > self.settings.max_crops_per_request:
            raise FaceScoreError(
                Reason.TOO_MANY_CROPS,
                f"at most {self.settings.max_crops_per_request} crops per call",
                metadata={"limit": str(self.settings.max_crops_per_request)},
            )
        response = embed_pb2.EmbedResponse(model=self.recognizer.model_info())
        if not request.crops:
            return response
        crops = [self._crop_array(i, crop) for i, crop in enumerate(request.crops)]
        vectors = await batcher.submit(crops)
        for vector in vectors:
            response.embeddings.add(values=vector.tolist())
        return response

    def _crop_array(self, index: int, crop: common_pb2.AlignedCrop) -> np.ndarray:
        width, height = self.recognizer.input_size
        if (crop.width, crop.height) != (width, height) or len(crop.bgr) != width * height * 3:
            raise FaceScoreError(
                Reason.INVALID_CROP,
                f"crop {index} must be {width}x{height} BGR uint8 ({width * height * 3} bytes); "
                f"got {crop.width}x{crop.height} with {len(crop.bgr)} bytes",
                metadata={"index": str(index), "expected": f"{width}x{height}"},
            )
        return np.frombuffer(crop.bgr, np.uint8).reshape(height, width, 3)

    def _require_ready(self) -> Batcher:
        if self._batcher is None:
            raise FaceScoreError(
                Reason.NOT_READY, "recognizer is still loading", grpc.StatusCode.UNAVAILABLE
            )
        return self._batcher


def main() -> int:
    settings = EmbedSettings()
    configure_logging("embed", settings.log_level, settings.log_format)
    return asyncio.run(serve(EmbedService(settings), settings))
