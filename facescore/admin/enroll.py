"""`facescore enroll DIR`: enroll a folder of photos (DIR/<subject>/<photos>) through score's API.

Every photo is one Enroll call on the score gRPC service, a few at a time, each with a
deadline; UNAVAILABLE and queue_full are retried with exponential backoff. Enroll is
idempotent (the face id derives from gallery, subject and photo), so an interrupted run is
simply run again: photos already enrolled come back as "already there" and nothing is
stored twice. The run ends with a summary, failures grouped by their stable reason.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.errors import Reason, reason_of

T = TypeVar("T")

FACE_SELECTIONS = {
    "single": score_pb2.FACE_SELECTION_REQUIRE_SINGLE,
    "largest": score_pb2.FACE_SELECTION_LARGEST,
}
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 5.0
FILES_SHOWN_PER_REASON = 5


class EnrollUsageError(Exception):
    """The command was called wrongly (exit status 2)."""


class EnrollSetupError(Exception):
    """The run could not start: score unreachable, gallery missing (exit status 1)."""


class Outcome(StrEnum):
    ENROLLED = "enrolled"
    ALREADY = "already there"
    FAILED = "failed"


@dataclass(frozen=True)
class Photo:
    subject: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.subject}/{self.path.name}"


@dataclass(frozen=True)
class Result:
    photo: Photo
    outcome: Outcome
    reason: str = ""
    detail: str = ""
    attempts: int = 1


@dataclass(frozen=True)
class EnrollOptions:
    target: str
    gallery: str
    concurrency: int = 4
    create_gallery: bool = False
    face_selection: str = "single"
    timeout_s: float = 30.0
    retries: int = 5


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)
    skipped: int = 0
    elapsed_s: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    def failures_by_reason(self) -> dict[str, list[Result]]:
        grouped: dict[str, list[Result]] = defaultdict(list)
        for result in self.results:
            if result.outcome == Outcome.FAILED:
                grouped[result.reason].append(result)
        return dict(sorted(grouped.items(), key=lambda item: (-len(item[1]), item[0])))

    @property
    def exit_code(self) -> int:
        return 1 if self.count(Outcome.FAILED) else 0


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def collect(root: Path) -> tuple[list[Photo], int]:
    """The photos under root/<subject>/, sorted, and how many entries were skipped.

    Skipped: hidden entries (a leading dot), files directly under root, folders inside a
    subject folder, and anything that is not a regular file.
    """
    if not root.is_dir():
        raise EnrollUsageError(f"{root} is not a folder (expected DIR/<subject>/<photos>)")
    photos: list[Photo] = []
    skipped = 0
    for subject_dir in sorted(root.iterdir()):
        if _hidden(subject_dir) or not subject_dir.is_dir():
            skipped += 1
            continue
        for path in sorted(subject_dir.iterdir()):
            if _hidden(path) or not path.is_file():
                skipped += 1
                continue
            photos.append(Photo(subject_dir.name, path))
    return photos, skipped


def _reason(error: grpc.aio.AioRpcError) -> str | None:
    try:
        return reason_of(error)
    except ValueError:  # a status detail that contradicts the call's status: no reason
        return None


def _retryable(error: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE never reached a model; queue_full asks to come back later."""
    return bool(error.code() == grpc.StatusCode.UNAVAILABLE or _reason(error) == Reason.QUEUE_FULL)


async def _with_retries(
    call: Callable[[], Awaitable[T]], retries: int, attempts: list[int] | None = None
) -> T:
    attempt = 0
    while True:
        attempt += 1
        if attempts is not None:
            attempts[0] = attempt
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if attempt > retries or not _retryable(error):
                raise
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


def _failure_reason(error: grpc.aio.AioRpcError) -> str:
    """The service's stable reason, else the gRPC status (e.g. a too large message)."""
    return _reason(error) or error.code().name.lower()


class Enroller:
    def __init__(self, stub: Any, options: EnrollOptions) -> None:
        # A ScoreServiceAsyncStub; grpc's own types are not checked (no stubs installed).
        self.stub = stub
        self.options = options

    async def prepare(self) -> None:
        """Reach score (with retries), then make sure the gallery exists."""
        options = self.options
        timeout = options.timeout_s
        try:
            await _with_retries(
                lambda: self.stub.GetServiceInfo(
                    score_pb2.GetServiceInfoRequest(), timeout=timeout
                ),
                options.retries,
            )
        except grpc.aio.AioRpcError as error:
            raise EnrollSetupError(
                f"cannot reach the score service at {options.target} "
                f"({error.code().name}: {error.details()})"
            ) from error
        if options.create_gallery:
            try:
                await _with_retries(
                    lambda: self.stub.CreateGallery(
                        score_pb2.CreateGalleryRequest(name=options.gallery), timeout=timeout
                    ),
                    options.retries,
                )
            except grpc.aio.AioRpcError as error:
                if _reason(error) != Reason.GALLERY_EXISTS:
                    raise EnrollSetupError(
                        f"cannot create gallery {options.gallery!r}: {error.details()}"
                    ) from error
            return
        try:
            listing = await _with_retries(
                lambda: self.stub.ListGalleries(score_pb2.ListGalleriesRequest(), timeout=timeout),
                options.retries,
            )
        except grpc.aio.AioRpcError as error:
            raise EnrollSetupError(f"cannot list the galleries: {error.details()}") from error
        if options.gallery not in {g.name for g in listing.galleries}:
            raise EnrollSetupError(
                f"gallery {options.gallery!r} does not exist on {options.target}; "
                "create it, or pass --create-gallery"
            )

    async def enroll(self, photo: Photo) -> Result:
        try:
            image = await asyncio.to_thread(photo.path.read_bytes)
        except OSError as error:
            return Result(photo, Outcome.FAILED, "unreadable", str(error))
        request = score_pb2.EnrollRequest(
            gallery=self.options.gallery,
            subject_id=photo.subject,
            image=image,
            face_selection=FACE_SELECTIONS[self.options.face_selection],
        )
        attempts = [0]
        try:
            reply = await _with_retries(
                lambda: self.stub.Enroll(request, timeout=self.options.timeout_s),
                self.options.retries,
                attempts,
            )
        except grpc.aio.AioRpcError as error:
            return Result(
                photo, Outcome.FAILED, _failure_reason(error), error.details() or "", attempts[0]
            )
        outcome = Outcome.ENROLLED if reply.created else Outcome.ALREADY
        return Result(photo, outcome, attempts=attempts[0])

    async def run(self, photos: list[Photo], on_result: Callable[[Result], None]) -> list[Result]:
        results: list[Result] = []
        pending: Iterator[Photo] = iter(photos)

        async def worker() -> None:
            for photo in pending:  # shared iterator: each photo goes to exactly one worker
                result = await self.enroll(photo)
                results.append(result)
                on_result(result)

        await asyncio.gather(*(worker() for _ in range(min(self.options.concurrency, len(photos)))))
        return sorted(results, key=lambda r: (r.photo.subject, r.photo.path.name))


async def enroll_folder(
    photos: list[Photo], options: EnrollOptions, on_result: Callable[[Result], None]
) -> list[Result]:
    async with grpc.aio.insecure_channel(options.target) as channel:
        enroller = Enroller(score_pb2_grpc.ScoreServiceStub(channel), options)
        await enroller.prepare()
        return await enroller.run(photos, on_result)


def print_summary(summary: Summary, options: EnrollOptions, out: TextIO) -> None:
    subjects = len({r.photo.subject for r in summary.results})
    lines = [
        f"gallery {options.gallery!r} at {options.target}: {len(summary.results)} photo(s) "
        f"of {subjects} subject(s) in {summary.elapsed_s:.1f} s",
        f"  enrolled       {summary.count(Outcome.ENROLLED)}",
        f"  already there  {summary.count(Outcome.ALREADY)}",
        f"  failed         {summary.count(Outcome.FAILED)}",
    ]
    if summary.skipped:
        lines.append(
            f"  skipped        {summary.skipped} (hidden, or not a file in DIR/<subject>/)"
        )
    failures = summary.failures_by_reason()
    if failures:
        lines.append("failures by reason:")
        for reason, results in failures.items():
            lines.append(f"  {reason} ({len(results)}):")
            for result in results[:FILES_SHOWN_PER_REASON]:
                detail = f": {result.detail}" if result.detail else ""
                lines.append(f"    {result.photo.label}{detail}")
            if len(results) > FILES_SHOWN_PER_REASON:
                lines.append(f"    ... and {len(results) - FILES_SHOWN_PER_REASON} more")
        lines.append(
            "fix or remove those photos and run again: photos already enrolled are skipped "
            "(Enroll is idempotent)"
        )
    print("\n".join(lines), file=out)


def run(root: Path, options: EnrollOptions, out: TextIO | None = None) -> int:
    """Enroll root/<subject>/<photos>; the exit status: 0 all done, 1 failures, 2 misuse."""
    out = out or sys.stdout
    console = Console(stderr=True)
    try:
        if options.concurrency < 1:
            raise EnrollUsageError("--concurrency must be at least 1")
        if options.face_selection not in FACE_SELECTIONS:
            raise EnrollUsageError(f"--face-selection must be one of {', '.join(FACE_SELECTIONS)}")
        photos, skipped = collect(root)
        if not photos:
            raise EnrollUsageError(f"no photos under {root} (expected DIR/<subject>/<photos>)")
    except EnrollUsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = Summary(skipped=skipped)
    started = time.monotonic()
    progress = Progress(
        TextColumn("enrolling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("enroll", total=len(photos), failed=0)

        def advance(result: Result) -> None:
            failed = progress.tasks[task].fields["failed"] + (result.outcome == Outcome.FAILED)
            progress.update(task, advance=1, failed=failed)

        try:
            summary.results = asyncio.run(enroll_folder(photos, options, advance))
        except EnrollSetupError as error:
            progress.stop()
            print(f"error: {error}", file=sys.stderr)
            return 1
    summary.elapsed_s = time.monotonic() - started
    print_summary(summary, options, out)
    return summary.exit_code
