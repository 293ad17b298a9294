"""Outcomes of raced writes: each call succeeds or fails with a reason the race allows.

An enrollment raced by deletes may find its gallery gone, a delete may find its subject
or gallery gone; any other failure (internal, dependency_unavailable, ...) is a bug the
race exposed and fails the test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable

import grpc

from services.common.errors import FaceScoreError, Reason, reason_of

RACE_REASONS = frozenset({Reason.SUBJECT_NOT_FOUND, Reason.GALLERY_NOT_FOUND})


def _reason(error: Exception) -> str | None:
    if isinstance(error, FaceScoreError):
        return str(error.reason)
    if isinstance(error, grpc.aio.AioRpcError):
        return reason_of(error)
    return None


class RaceTally:
    """Counts successes per kind of call, and refusals per kind and reason."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()

    async def run(self, kind: str, call: Awaitable[object]) -> None:
        try:
            await call
        except (FaceScoreError, grpc.aio.AioRpcError) as error:
            reason = _reason(error)
            assert reason in RACE_REASONS, f"{kind} failed with {reason!r}: {error}"
            self.refused[kind, reason] += 1
        else:
            self.done[kind] += 1

    def __repr__(self) -> str:
        return f"done {dict(self.done)}, refused {dict(self.refused)}"
