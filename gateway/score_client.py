"""The score service as the routes use it: one channel, deadlines, errors as problems.

The request id travels with every call through the channel's interceptor
(services.common.channels), so no route handles it.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from facescore.v1 import score_pb2, score_pb2_grpc
from gateway.problems import STATUS_OF_REASON, Problem
from services.common.channels import open_channel
from services.common.errors import error_info

log = structlog.get_logger(__name__)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Probes must answer quickly even when score hangs: shorter than any probe's own timeout.
HEALTH_TIMEOUT_S = 3.0


def from_rpc_error(error: grpc.aio.AioRpcError, retry_after_s: int) -> Problem:
    """A failed score call as the problem our caller gets."""
    info = error_info(error)
    if info is None:
        # No reason: the call never reached score's logic (score down, deadline, transport).
        # gRPC's own detail names internal addresses: it goes to the log, not to the caller.
        log.warning("score call failed", grpc_code=error.code().name, detail=error.details())
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Problem(504, "deadline_exceeded", "the request took too long")
        return Problem(
            503,
            "dependency_unavailable",
            f"score is unavailable ({error.code().name})",
            {"dependency": "score"},
            {"Retry-After": str(retry_after_s)},
        )
    status = STATUS_OF_REASON.get(info.reason, 500)
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else {}
    detail = error.details() or info.reason
    return Problem(status, info.reason, detail, dict(info.metadata), headers)


class ScoreClient:
    """ScoreService with the gateway's deadline; a failed call raises the caller's Problem."""

    def __init__(self, target: str, deadline_s: float, retry_after_s: int) -> None:
        self._channel = open_channel(target, MAX_MESSAGE_BYTES)
        self._stub = score_pb2_grpc.ScoreServiceStub(self._channel)
        self._deadline_s = deadline_s
        self._retry_after_s = retry_after_s

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, rpc: Any, request: Message) -> Any:
        try:
            return await rpc(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, self._retry_after_s) from None

    # One typed method per RPC: grpc itself is untyped, so the types are said here once.

    async def service_info(self) -> score_pb2.ServiceInfo:
        reply: score_pb2.ServiceInfo = await self._call(
            self._stub.GetServiceInfo, score_pb2.GetServiceInfoRequest()
        )
        return reply

    async def analyze(self, request: score_pb2.AnalyzeRequest) -> score_pb2.AnalyzeResponse:
        reply: score_pb2.AnalyzeResponse = await self._call(self._stub.Analyze, request)
        return reply

    async def identify(self, request: score_pb2.IdentifyRequest) -> score_pb2.IdentifyResponse:
        reply: score_pb2.IdentifyResponse = await self._call(self._stub.Identify, request)
        return reply

    async def verify(self, request: score_pb2.VerifyRequest) -> score_pb2.VerifyResponse:
        reply: score_pb2.VerifyResponse = await self._call(self._stub.Verify, request)
        return reply

    async def enroll(self, request: score_pb2.EnrollRequest) -> score_pb2.EnrollResponse:
        reply: score_pb2.EnrollResponse = await self._call(self._stub.Enroll, request)
        return reply

    async def list_galleries(self) -> score_pb2.ListGalleriesResponse:
        reply: score_pb2.ListGalleriesResponse = await self._call(
            self._stub.ListGalleries, score_pb2.ListGalleriesRequest()
        )
        return reply

    async def create_gallery(self, name: str) -> score_pb2.Gallery:
        reply: score_pb2.Gallery = await self._call(
            self._stub.CreateGallery, score_pb2.CreateGalleryRequest(name=name)
        )
        return reply

    async def delete_gallery(self, name: str) -> score_pb2.DeleteGalleryResponse:
        reply: score_pb2.DeleteGalleryResponse = await self._call(
            self._stub.DeleteGallery, score_pb2.DeleteGalleryRequest(name=name)
        )
        return reply

    async def list_subjects(
        self, request: score_pb2.ListSubjectsRequest
    ) -> score_pb2.ListSubjectsResponse:
        reply: score_pb2.ListSubjectsResponse = await self._call(self._stub.ListSubjects, request)
        return reply

    async def get_subject(self, gallery: str, subject_id: str) -> score_pb2.Subject:
        reply: score_pb2.Subject = await self._call(
            self._stub.GetSubject,
            score_pb2.GetSubjectRequest(gallery=gallery, subject_id=subject_id),
        )
        return reply

    async def delete_subject(
        self, gallery: str, subject_id: str
    ) -> score_pb2.DeleteSubjectResponse:
        reply: score_pb2.DeleteSubjectResponse = await self._call(
            self._stub.DeleteSubject,
            score_pb2.DeleteSubjectRequest(gallery=gallery, subject_id=subject_id),
        )
        return reply

    async def delete_face(self, gallery: str, face_id: str) -> score_pb2.DeleteFaceResponse:
        reply: score_pb2.DeleteFaceResponse = await self._call(
            self._stub.DeleteFace, score_pb2.DeleteFaceRequest(gallery=gallery, face_id=face_id)
        )
        return reply

    async def health(self) -> score_pb2.HealthReport:
        """score's report on itself and its dependencies; a score that cannot answer is down."""
        try:
            report: score_pb2.HealthReport = await self._stub.GetHealth(
                score_pb2.GetHealthRequest(), timeout=HEALTH_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            down = score_pb2.DependencyHealth(name="score", ok=False, detail=error.code().name)
            return score_pb2.HealthReport(ok=False, dependencies=[down])
        return report
