"""How a failed call to detect or embed reaches score's caller."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from services.common.errors import FaceScoreError, Reason
from services.score.clients import ATTEMPTS, call_with_attempts, dependency_error


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


def calls_failing_with(
    *codes: grpc.StatusCode,
) -> tuple[list[int], Callable[[float], Awaitable[str]]]:
    """A call that fails with each code in turn, then answers; and the attempts it saw."""
    seen: list[int] = []

    async def call(timeout: float) -> str:
        assert timeout > 0
        seen.append(len(seen) + 1)
        if len(seen) <= len(codes):
            raise failed_call(codes[len(seen) - 1], None, "cut off")
        return "answer"

    return seen, call


async def test_unavailable_is_sent_again_until_the_attempts_run_out() -> None:
    deadline = time.monotonic() + 60
    seen, call = calls_failing_with(*[grpc.StatusCode.UNAVAILABLE] * (ATTEMPTS - 1))
    assert await call_with_attempts("embed", call, deadline) == "answer"
    assert len(seen) == ATTEMPTS
    seen, call = calls_failing_with(*[grpc.StatusCode.UNAVAILABLE] * ATTEMPTS)
    with pytest.raises(FaceScoreError) as raised:
        await call_with_attempts("embed", call, deadline)
    assert raised.value.reason == Reason.DEPENDENCY_UNAVAILABLE and len(seen) == ATTEMPTS


async def test_other_failures_are_answered_at_once() -> None:
    for code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED):
        seen, call = calls_failing_with(code)
        with pytest.raises(FaceScoreError):
            await call_with_attempts("detect", call, time.monotonic() + 60)
        assert len(seen) == 1, code


def test_dependency_errors_name_the_dependency_and_log_the_transport_detail() -> None:
    raw = "ipv4:172.18.0.2:50052: Failed to connect to remote host: No route to host"
    structlog.contextvars.bind_contextvars(request_id="rid-dependency-1")
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            error = dependency_error("embed", failed_call(grpc.StatusCode.UNAVAILABLE, None, raw))
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    assert error.reason is Reason.DEPENDENCY_UNAVAILABLE
    assert error.message == "embed is unavailable (UNAVAILABLE)"
    assert error.metadata == {"dependency": "embed"}
    logged = [entry for entry in logs if entry.get("detail") == raw]
    assert logged and logged[0]["request_id"] == "rid-dependency-1"
    assert logged[0]["dependency"] == "embed"


def test_a_full_queue_says_so_without_the_dependency_s_own_words() -> None:
    error = dependency_error(
        "detect", failed_call(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.QUEUE_FULL, "32 waiting")
    )
    assert (error.reason, error.message) == (Reason.QUEUE_FULL, "detect is at capacity")
