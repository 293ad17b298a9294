"""A model that fails on its execution provider: a clear error, then NOT_SERVING.

No GPU is lent to this machine, so a GPU fault is played by the real session's run raising
the error ONNX Runtime raises for one (a stand-in for the GPU, and only for it): the service,
gRPC server, batcher and health are the real ones, in this process.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from facescore.v1 import common_pb2, embed_pb2, embed_pb2_grpc
from services.common.errors import FaceScoreError, Reason, reason_of
from services.common.models import vectron_file
from services.common.server import serve
from services.detect.detector import FaceDetector
from services.detect.settings import DetectSettings
from services.embed.server import EmbedService
from services.embed.settings import EmbedSettings
from tests.conftest import free_port

GPU_FAULT = "CUDA failure 700: an illegal memory access was encountered"


def gpu_fault(*args: Any, **kwargs: Any) -> Any:
    raise ort_errors.Fail(GPU_FAULT)


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


async def wait_serving(address: str, server: asyncio.Task[int]) -> None:
    async with asyncio.timeout(120):
        while True:
            assert not server.done(), "the service stopped while starting"
            try:
                if await health(address) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)


def side_port_health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def test_a_gpu_fault_answers_model_failed_and_turns_health_not_serving() -> None:
    settings = EmbedSettings(port=free_port(), metrics_port=free_port(), grace_period_s=1)
    address = f"127.0.0.1:{settings.port}"
    service = EmbedService(settings)
    stopping = asyncio.Event()
    server = asyncio.create_task(serve(service, settings, stopping))
    try:
        await wait_serving(address, server)
        service.recognizer.session.run = gpu_fault  # type: ignore[method-assign]
        crop = common_pb2.AlignedCrop(width=112, height=112, bgr=bytes(112 * 112 * 3))
        async with grpc.aio.insecure_channel(address) as channel:
            stub = embed_pb2_grpc.EmbedServiceStub(channel)
            for _ in range(2):  # the failure is final: the second call hears it too
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.Embed(embed_pb2.EmbedRequest(crops=[crop]), timeout=30)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert reason_of(raised.value) == "model_failed"
                assert GPU_FAULT in (raised.value.details() or "")
                # Health changed before the error was answered: no window to route into.
                assert await health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        url = f"http://127.0.0.1:{settings.metrics_port}/health"
        status, details = await asyncio.to_thread(side_port_health, url)
        assert status == 503 and details["status"] == "NOT_SERVING"
        assert GPU_FAULT in details["failure"]
    finally:
        stopping.set()
        assert await asyncio.wait_for(server, 30) == 0


def test_the_detector_reports_a_gpu_fault_as_model_failed() -> None:
    detector = FaceDetector(DetectSettings())
    detector.load()
    detector.session.run = gpu_fault  # type: ignore[method-assign]
    image = cv2.imread(str(vectron_file("yaoming.jpg")))
    assert isinstance(image, np.ndarray)
    for _ in range(2):
        with pytest.raises(FaceScoreError) as raised:
            detector.detect(image, 0.5)
        assert raised.value.reason == Reason.MODEL_FAILED
    assert detector.failure is not None and GPU_FAULT in detector.failure
