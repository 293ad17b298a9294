"""The request id a caller sends: kept when it is safe to forward and log, replaced otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_a_librarys_warning_is_a_json_log_line() -> None:
    """A Python warning in a configured service (a fresh process: pytest captures warnings
    itself) is written as one structured line, not as raw text between the JSON lines."""
    script = (
        "import warnings\n"
        "from services.common.logging import configure_logging\n"
        "configure_logging('score')\n"
        "warnings.warn('server version unknown', UserWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = json.loads(lines[0])
    assert line["level"] == "warning" and line["logger"] == "py.warnings"
    assert line["service"] == "score" and "server version unknown" in line["event"]
