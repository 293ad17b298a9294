"""How a failed call to detect or embed reaches score's caller."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import FaceScoreError, Reason
from services.score.clients import dependency_error


def failed_call(code: grpc.StatusCode, reason: Reason | None, details: str) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason is not None:
        status = FaceScoreError(reason, details, code).to_status()
        trailing = grpc.aio.Metadata(*status.trailing_metadata)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("code", "reason", "expected", "expected_code"),
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.CORRUPT_IMAGE,
            Reason.CORRUPT_IMAGE,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            Reason.QUEUE_FULL,
            Reason.QUEUE_FULL,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            None,
            Reason.DEPENDENCY_UNAVAILABLE,
            grpc.StatusCode.UNAVAILABLE,
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            None,
            Reason.DEPENDENCY_UNAVAILABLE,
            grpc.StatusCode.UNAVAILABLE,
        ),
    ],
)
def test_dependency_errors_keep_their_meaning(
    code: grpc.StatusCode, reason: Reason | None, expected: Reason, expected_code: grpc.StatusCode
) -> None:
    error = dependency_error("embed", failed_call(code, reason, "boom"))
    assert (error.reason, error.code) == (expected, expected_code)
    if expected is not Reason.CORRUPT_IMAGE:
        assert error.metadata["dependency"] == "embed"
