"""gRPC clients of detect and embed: deadlines, retries on UNAVAILABLE, round-robin over DNS."""

from __future__ import annotations

import time

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.channels import open_channel
from services.common.errors import FaceScoreError, Reason, reason_of

log = structlog.get_logger(__name__)
# Retried on UNAVAILABLE only: such a call never reached a model, so a retry is safe.
_INFERENCE_SERVICES = ("facescore.v1.DetectService", "facescore.v1.EmbedService")


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


class InferenceClient:
    """The detect and embed services, as the score service uses them."""

    def __init__(self, detect_target: str, embed_target: str, max_message_bytes: int) -> None:
        self._detect_channel = open_channel(
            detect_target, max_message_bytes, retry=_INFERENCE_SERVICES
        )
        self._embed_channel = open_channel(
            embed_target, max_message_bytes, retry=_INFERENCE_SERVICES
        )
        self._detect = detect_pb2_grpc.DetectServiceStub(self._detect_channel)
        self._embed = embed_pb2_grpc.EmbedServiceStub(self._embed_channel)

    async def close(self) -> None:
        await self._detect_channel.close()
        await self._embed_channel.close()

    async def detect(self, image: bytes, deadline: float) -> detect_pb2.DetectResponse:
        try:
            response: detect_pb2.DetectResponse = await self._detect.Detect(
                detect_pb2.DetectRequest(image=image, include_crops=True),
                timeout=remaining(deadline),
            )
        except grpc.aio.AioRpcError as error:
            raise dependency_error("detect", error) from None
        return response

    async def embed(
        self, crops: list[common_pb2.AlignedCrop], deadline: float
    ) -> embed_pb2.EmbedResponse:
        try:
            response: embed_pb2.EmbedResponse = await self._embed.Embed(
                embed_pb2.EmbedRequest(crops=crops), timeout=remaining(deadline)
            )
        except grpc.aio.AioRpcError as error:
            raise dependency_error("embed", error) from None
        return response

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
