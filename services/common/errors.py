"""Stable, machine-readable error reasons and their gRPC encoding.

A reason travels as a ``google.rpc.ErrorInfo`` detail (domain ``facescore``) of the
gRPC status, from the service that found it up to the REST response's ``code``.
"""

from __future__ import annotations

from enum import StrEnum

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "facescore"


class Reason(StrEnum):
    # Image decoding (services/common/images.py).
    EMPTY_IMAGE = "empty_image"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_COMPLEX = "image_too_complex"
    # Request validation.
    INVALID_ARGUMENT = "invalid_argument"
    INVALID_CROP = "invalid_crop"
    TOO_MANY_CROPS = "too_many_crops"
    INVALID_METADATA = "invalid_metadata"
    # Use cases (score service).
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    FACE_QUALITY_TOO_LOW = "face_quality_too_low"
    GALLERY_NOT_FOUND = "gallery_not_found"
    GALLERY_EXISTS = "gallery_exists"
    SUBJECT_NOT_FOUND = "subject_not_found"
    FACE_NOT_FOUND = "face_not_found"
    EMBEDDING_MODEL_MISMATCH = "embedding_model_mismatch"
    # Capacity and dependencies.
    QUEUE_FULL = "queue_full"
    NOT_READY = "not_ready"
    # The model failed on its execution provider (a GPU fault): the process is NOT_SERVING.
    MODEL_FAILED = "model_failed"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


_GRPC_TO_RPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}


class FaceScoreError(Exception):
    """An error with a stable reason; servers turn it into a gRPC status."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code
        self.metadata = metadata or {}

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(
            reason=str(self.reason), domain=DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        return rpc_status.to_status(
            status_pb2.Status(
                code=_GRPC_TO_RPC_CODE.get(self.code, code_pb2.UNKNOWN),
                message=self.message,
                details=[detail],
            )
        )


def error_info(error: grpc.RpcError | grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The facescore ErrorInfo carried by a failed call, if any."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                return info
    return None


def reason_of(error: grpc.RpcError | grpc.aio.AioRpcError) -> str | None:
    """The stable reason of a failed call, or None when the call carries none."""
    info = error_info(error)
    return info.reason if info is not None else None
