"""The enroll command's calls: deadlines, which errors are retried, how failures are named."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest

from facescore.admin import enroll as enroll_module
from facescore.admin.enroll import (
    Enroller,
    EnrollOptions,
    Outcome,
    Photo,
    Result,
    Summary,
    print_summary,
)
from facescore.v1 import score_pb2
from services.common.errors import FaceScoreError, Reason


def rpc_error(code: grpc.StatusCode, reason: Reason | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    details = f"{code.name} here"
    if reason is not None:
        status = FaceScoreError(reason, details, code).to_status()
        trailing = grpc.aio.Metadata(*status.trailing_metadata)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


class ScriptedStub:
    """Enroll answers with the scripted errors first, then succeeds."""

    def __init__(self, *errors: grpc.aio.AioRpcError) -> None:
        self.errors = list(errors)
        self.timeouts: list[float] = []

    async def Enroll(
        self, request: score_pb2.EnrollRequest, timeout: float
    ) -> score_pb2.EnrollResponse:
        self.timeouts.append(timeout)
        if self.errors:
            raise self.errors.pop(0)
        return score_pb2.EnrollResponse(face_id="f", created=True)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enroll_module, "BACKOFF_BASE_S", 0.001)


@pytest.fixture()
def photo(tmp_path: Path) -> Photo:
    path = tmp_path / "ada" / "1.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8 not really a photo")
    return Photo("ada", path)


OPTIONS = EnrollOptions(target="127.0.0.1:1", gallery="g", timeout_s=7.5, retries=3)


@pytest.mark.parametrize(
    "error",
    [
        rpc_error(grpc.StatusCode.UNAVAILABLE),
        rpc_error(grpc.StatusCode.UNAVAILABLE, Reason.NOT_READY),
        rpc_error(grpc.StatusCode.UNAVAILABLE, Reason.DEPENDENCY_UNAVAILABLE),
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.QUEUE_FULL),
    ],
)
async def test_unavailable_and_queue_full_are_retried(
    photo: Photo, error: grpc.aio.AioRpcError
) -> None:
    stub = ScriptedStub(error, error)
    result = await Enroller(stub, OPTIONS).enroll(photo)
    assert result.outcome == Outcome.ENROLLED and result.attempts == 3
    assert stub.timeouts == [7.5, 7.5, 7.5]  # every call carries the deadline


async def test_retries_end(photo: Photo) -> None:
    stub = ScriptedStub(*[rpc_error(grpc.StatusCode.UNAVAILABLE, Reason.NOT_READY)] * 10)
    result = await Enroller(stub, OPTIONS).enroll(photo)
    assert (result.outcome, result.reason, result.attempts) == (Outcome.FAILED, "not_ready", 4)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (rpc_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.NO_FACE), "no_face"),
        (rpc_error(grpc.StatusCode.NOT_FOUND, Reason.GALLERY_NOT_FOUND), "gallery_not_found"),
        # A message over the server's limit: no facescore reason, the status names it.
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), "resource_exhausted"),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), "deadline_exceeded"),
    ],
)
async def test_other_errors_fail_at_once(
    photo: Photo, error: grpc.aio.AioRpcError, reason: str
) -> None:
    stub = ScriptedStub(error)
    result = await Enroller(stub, OPTIONS).enroll(photo)
    assert (result.outcome, result.reason, result.attempts) == (Outcome.FAILED, reason, 1)


async def test_unreadable_file(tmp_path: Path) -> None:
    result = await Enroller(ScriptedStub(), OPTIONS).enroll(Photo("ada", tmp_path / "gone.jpg"))
    assert (result.outcome, result.reason) == (Outcome.FAILED, "unreadable")


def test_summary_shows_the_first_few_files_of_each_reason(tmp_path: Path) -> None:
    results = [
        Result(Photo("s", tmp_path / f"{i}.jpg"), Outcome.FAILED, "no_face", "no face found")
        for i in range(8)
    ]
    results.append(Result(Photo("s", tmp_path / "ok.jpg"), Outcome.ENROLLED))
    out = io.StringIO()
    print_summary(Summary(results=results, elapsed_s=1.0), OPTIONS, out)
    text = out.getvalue()
    assert "  enrolled       1\n  already there  0\n  failed         8\n" in text
    assert "  no_face (8):\n    s/0.jpg: no face found\n" in text
    assert "s/4.jpg" in text and "s/5.jpg" not in text
    assert "    ... and 3 more" in text
