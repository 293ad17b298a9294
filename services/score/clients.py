"""gRPC clients of detect and embed: deadlines, retries on UNAVAILABLE, round-robin over DNS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.channels import open_channel
from services.common.errors import FaceScoreError, Reason, reason_of

log = structlog.get_logger(__name__)
# Retried on UNAVAILABLE only: such a call never reached a model, so a retry is safe.
_INFERENCE_SERVICES = ("facescore.v1.DetectService", "facescore.v1.EmbedService")
# A call cut off by a replica's death is UNAVAILABLE too, but past gRPC's retry policy: the
# replica had sent its response headers. detect and embed are pure functions of the request,
# so such a call is sent again, by round_robin to another replica.
ATTEMPTS = 3
BACKOFF_S = 0.05  # Times the attempt number: time for the channel to see the connection gone.

T = TypeVar("T")


def remaining(deadline: float) -> float:
    """Seconds left until `deadline` (time.monotonic()); raises once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FaceScoreError(
            Reason.DEADLINE_EXCEEDED, "deadline exceeded", grpc.StatusCode.DEADLINE_EXCEEDED
        )
    return left


def dependency_error(dependency: str, error: grpc.aio.AioRpcError) -> FaceScoreError:
    """What a failed call to detect or embed means for our caller."""
    reason = reason_of(error)
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason is not None:
        # The photo itself is at fault (empty, corrupt, too large...): the reason travels up.
        return FaceScoreError(Reason(reason), error.details() or reason)
    # gRPC's own detail can name internal addresses and transport errors: it goes to the
    # log (with the request id), the caller learns which dependency failed and how.
    log.warning(
        "dependency call failed",
        dependency=dependency,
        grpc_code=error.code().name,
        reason=reason,
        detail=error.details(),
    )
    if reason == Reason.QUEUE_FULL:
        return FaceScoreError(
            Reason.QUEUE_FULL,
            f"{dependency} is at capacity",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            metadata={"dependency": dependency},
        )
    return FaceScoreError(
        Reason.DEPENDENCY_UNAVAILABLE,
        f"{dependency} is unavailable ({error.code().name})",
        grpc.StatusCode.UNAVAILABLE,
        metadata={"dependency": dependency},
    )


async def call_with_attempts(
    dependency: str, call: Callable[[float], Awaitable[T]], deadline: float
) -> T:
    """The call, sent again on UNAVAILABLE while attempts and the deadline last."""
    attempt = 1
    while True:
        try:
            return await call(remaining(deadline))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS:
                raise dependency_error(dependency, error) from None
        await asyncio.sleep(min(BACKOFF_S * attempt, remaining(deadline)))
        attempt += 1


class InferenceClient:
    """The detect and embed services, as the score service uses them."""

    def __init__(self, detect_target: str, embed_target: str, max_message_bytes: int) -> None:
        self._detect_channel = open_channel(
            detect_target, max_message_bytes, retry=_INFERENCE_SERVICES, health_checked=True
        )
        self._embed_channel = open_channel(
            embed_target, max_message_bytes, retry=_INFERENCE_SERVICES, health_checked=True
        )
        self._detect = detect_pb2_grpc.DetectServiceStub(self._detect_channel)
        self._embed = embed_pb2_grpc.EmbedServiceStub(self._embed_channel)

    async def close(self) -> None:
        await self._detect_channel.close()
        await self._embed_channel.close()

    async def detect(self, image: bytes, deadline: float) -> detect_pb2.DetectResponse:
        request = detect_pb2.DetectRequest(image=image, include_crops=True)
        return await call_with_attempts(
            "detect", lambda timeout: self._detect.Detect(request, timeout=timeout), deadline
        )

    async def embed(
        self, crops: list[common_pb2.AlignedCrop], deadline: float
    ) -> embed_pb2.EmbedResponse:
        request = embed_pb2.EmbedRequest(crops=crops)
        return await call_with_attempts(
            "embed", lambda timeout: self._embed.Embed(request, timeout=timeout), deadline
        )

    async def model_infos(
        self, timeout: float
    ) -> tuple[common_pb2.ModelInfo, common_pb2.ModelInfo]:
        """(detector, recognizer) identities; raises FaceScoreError while either is down."""
        request = common_pb2.GetModelInfoRequest()
        try:
            detector = await self._detect.GetModelInfo(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise dependency_error("detect", error) from None
        try:
            recognizer = await self._embed.GetModelInfo(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise dependency_error("embed", error) from None
        return detector, recognizer

    async def health(self, timeout: float) -> dict[str, str]:
        """grpc.health.v1 status name of detect and embed (UNREACHABLE when down)."""
        result = {}
        for name, channel in (("detect", self._detect_channel), ("embed", self._embed_channel)):
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout
                )
                result[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as error:
                result[name] = f"UNREACHABLE ({error.code().name})"
        return result
