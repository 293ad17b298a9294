"""Detect gRPC service."""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc
from services.common.errors import FaceScoreError, Reason
from services.common.images import decode_image
from services.common.logging import configure_logging
from services.common.server import serve
from services.detect.detector import FaceDetector, align
from services.detect.quality import face_quality
from services.detect.settings import DetectSettings

log = structlog.get_logger(__name__)


class DetectService(detect_pb2_grpc.DetectServiceServicer):
    service_name = detect_pb2.DESCRIPTOR.services_by_name["DetectService"].full_name

    def __init__(self, settings: DetectSettings) -> None:
        self.settings = settings
        self.detector = FaceDetector(settings)
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="detect")
        self._ready = False

    def register(self, server: grpc.aio.Server) -> None:
        detect_pb2_grpc.add_DetectServiceServicer_to_server(self, server)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.detector.load)
        await loop.run_in_executor(self._pool, self.detector.warm_up)
        self._ready = True

    async def stop(self) -> None:
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
        loop = asyncio.get_running_loop()
        # copy_context: the worker thread logs with this call's request id.
        return await loop.run_in_executor(
            self._pool,
            contextvars.copy_context().run,
            self._detect,
            request.image,
            threshold,
            max_faces,
            min_size,
            request.include_crops,
        )

    def _detect(
        self, data: bytes, threshold: float, max_faces: int, min_size: int, include_crops: bool
    ) -> detect_pb2.DetectResponse:
        image = decode_image(data, self.settings.max_image_bytes, self.settings.max_image_pixels)
        response = detect_pb2.DetectResponse(
            image=common_pb2.ImageInfo(
                width=image.width, height=image.height, format=image.format, sha256=image.sha256
            ),
            model=self.detector.model_info(),
        )
        for raw in self.detector.detect(image.bgr, threshold, max_faces, min_size):
            crop = align(image.bgr, raw.landmarks)
            face = response.faces.add(
                box=common_pb2.BoundingBox(
                    x1=float(raw.box[0]),
                    y1=float(raw.box[1]),
                    x2=float(raw.box[2]),
                    y2=float(raw.box[3]),
                ),
                score=raw.score,
                landmarks=[common_pb2.Point(x=float(x), y=float(y)) for x, y in raw.landmarks],
                quality=face_quality(raw.box, raw.landmarks, crop),
            )
            if include_crops:
                face.crop.CopyFrom(
                    common_pb2.AlignedCrop(
                        width=crop.shape[1], height=crop.shape[0], bgr=crop.tobytes()
                    )
                )
        return response

    def _require_ready(self) -> None:
        if not self._ready:
            raise FaceScoreError(
                Reason.NOT_READY, "detector is still loading", grpc.StatusCode.UNAVAILABLE
            )


def main() -> int:
    settings = DetectSettings()
    configure_logging("detect", settings.log_level, settings.log_format)
    return asyncio.run(serve(DetectService(settings), settings))
