"""The request id a caller sends: kept when it is safe to forward and log, replaced otherwise."""

from __future__ import annotations

import pytest

from services.common.logging import MAX_REQUEST_ID, REQUEST_ID_HEADER, request_id_from


@pytest.mark.parametrize("sent", ["abc-123", "a" * MAX_REQUEST_ID, "2b7e1c0f/ops:retry=2", "!~"])
def test_a_visible_ascii_id_is_kept(sent: str) -> None:
    assert request_id_from([("other", "x"), (REQUEST_ID_HEADER, sent)]) == sent


@pytest.mark.parametrize(
    "sent",
    [
        "tab\there",  # gRPC metadata refuses control characters
        "café",  # and anything outside ASCII
        "line\nbreak",  # would forge a second log line in plain-text logs
        "with space",
        "a" * (MAX_REQUEST_ID + 1),
        "",
        None,
    ],
)
def test_an_unusable_id_is_replaced_by_a_fresh_one(sent: str | None) -> None:
    fresh = request_id_from([(REQUEST_ID_HEADER, sent)])
    assert fresh != sent and len(fresh) == 32 and fresh.isalnum()
    assert request_id_from([(REQUEST_ID_HEADER, sent)]) != fresh


def test_no_id_gets_a_fresh_one() -> None:
    assert request_id_from(None) != request_id_from([])
