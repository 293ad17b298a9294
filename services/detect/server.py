"""Detect gRPC service."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import grpc
import structlog

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc
from services.common.decode_workers import DecodeLimits, DecodeWorkers
from services.common.errors import FaceScoreError, Reason
from services.common.logging import configure_logging
from services.common.server import serve
from services.detect.detector import FaceDetector
from services.detect.pipeline import DetectOptions, DetectPipeline
from services.detect.settings import DetectSettings

log = structlog.get_logger(__name__)


class DetectService(detect_pb2_grpc.DetectServiceServicer):
    service_name = detect_pb2.DESCRIPTOR.services_by_name["DetectService"].full_name

    def __init__(self, settings: DetectSettings) -> None:
        self.settings = settings
        self.detector = FaceDetector(settings)
        cv2.setNumThreads(settings.opencv_threads or -1)  # OpenCV: -1 is its default
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="detect")
        self._decoders = DecodeWorkers(settings.decode_workers, settings.decode_cpu_s)
        limits = DecodeLimits(
            settings.max_image_bytes, settings.max_image_pixels, settings.max_jpeg_scans
        )
        self._pipeline = DetectPipeline(
            self.detector,
            self._decoders,
            self._pool,
            limits,
            settings.input_size,
            settings.inline_decode_pixels,
            settings.decode_ahead,
        )
        self._ready = False

    def register(self, server: grpc.aio.Server) -> None:
        detect_pb2_grpc.add_DetectServiceServicer_to_server(self, server)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._decoders.start()
        await loop.run_in_executor(self._pool, self.detector.load)
        await loop.run_in_executor(self._pool, self.detector.warm_up)
        await self._decoders.warm_up()
        self._ready = True

    async def stop(self) -> None:
        self._decoders.stop()
        self._pool.shutdown(wait=True)

    def details(self) -> dict[str, Any]:
        info = self.detector.model_info()
        return {
            "model": {"name": info.name, "sha256": info.sha256, "role": info.role},
            "providers": list(info.providers),
            "input_size": self.settings.input_size,
        }

    async def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ModelInfo:
        self._require_ready()
        return self.detector.model_info()

    async def Detect(
        self, request: detect_pb2.DetectRequest, context: grpc.aio.ServicerContext
    ) -> detect_pb2.DetectResponse:
        self._require_ready()
        threshold = self.settings.score_threshold
        if request.HasField("score_threshold"):
            threshold = request.score_threshold
            if not 0 < threshold < 1:
                raise FaceScoreError(
                    Reason.INVALID_ARGUMENT,
                    "score_threshold must lie between 0 and 1",
                    metadata={"field": "score_threshold"},
                )
        max_faces = self.settings.max_faces
        if request.HasField("max_faces"):
            if request.max_faces < 1:
                raise FaceScoreError(
                    Reason.INVALID_ARGUMENT,
                    "max_faces must be at least 1",
                    metadata={"field": "max_faces"},
                )
            max_faces = min(request.max_faces, self.settings.max_faces)
        min_size = self.settings.min_face_size
        if request.HasField("min_face_size"):
            if request.min_face_size < 0:
                raise FaceScoreError(
                    Reason.INVALID_ARGUMENT,
                    "min_face_size must not be negative",
                    metadata={"field": "min_face_size"},
                )
            min_size = request.min_face_size
        options = DetectOptions(threshold, max_faces, min_size, request.include_crops)
        return await self._pipeline.run(request.image, options)

    def _require_ready(self) -> None:
        if not self._ready:
            raise FaceScoreError(
                Reason.NOT_READY, "detector is still loading", grpc.StatusCode.UNAVAILABLE
            )


def main() -> int:
    settings = DetectSettings()
    configure_logging("detect", settings.log_level, settings.log_format)
    return asyncio.run(serve(DetectService(settings), settings))
