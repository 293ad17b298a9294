"""What the app does around every route: request ids, path checks, metrics, disconnects."""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

from tests.conftest import ServiceProcess
from tests.gateway.rest import counter, problem

TOTAL = "facescore_http_requests_total"


@pytest.mark.parametrize(
    "sent",
    ["tab\there", "caf\xc3\xa9".encode("latin-1"), "x" * 129],
    ids=["tab", "non-ascii", "too-long"],
)
def test_an_unusable_request_id_is_replaced(api: httpx.Client, sent: str | bytes) -> None:
    # Such an id used to reach score as gRPC metadata and fail every call with a plain 500.
    reply = api.get("/api/v1/galleries", headers={"X-Request-Id": sent})
    assert reply.status_code == 200, reply.text
    fresh = reply.headers["x-request-id"]
    assert fresh != sent and len(fresh) == 32 and fresh.isalnum()


def test_a_usable_request_id_is_kept(api: httpx.Client) -> None:
    sent = f"client-{uuid.uuid4()}"
    assert (
        api.get("/api/v1/galleries", headers={"X-Request-Id": sent}).headers["x-request-id"] == sent
    )


def test_metrics_with_and_without_the_slash(api: httpx.Client) -> None:
    for path in ("/metrics", "/metrics/"):
        reply = api.get(path)
        assert reply.status_code == 200 and "python_info" in reply.text
        assert reply.headers["content-type"].startswith("text/plain")
    scraped = api.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert scraped.text.endswith("# EOF\n")


@pytest.mark.parametrize("slash", ["%2F", "%2f"])
def test_an_encoded_slash_in_a_path_is_refused(api: httpx.Client, slash: str) -> None:
    # Decoded, it would split the subject id into two segments and reach no route (405).
    for method, path in (
        ("POST", f"/api/v1/galleries/g/subjects/a{slash}b/faces"),
        ("GET", f"/api/v1/galleries/g/subjects/a{slash}b"),
        ("DELETE", f"/api/v1/galleries/a{slash}b"),
    ):
        refused = problem(api.request(method, path, json={}), 400, "invalid_argument")
        assert refused["field"] == "path"


def log_lines(service: ServiceProcess, start: int) -> list[dict[str, object]]:
    lines = service.logs()[start:].splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.parametrize("route", ["/api/v1/analyze", "/api/v1/galleries"])
def test_a_client_gone_mid_upload_is_499_without_a_traceback(
    api: httpx.Client, gateway_service: ServiceProcess, route: str
) -> None:
    # A photo route reads the body itself; FastAPI reads the gallery's JSON body.
    labels = {"route": route, "method": "POST", "status": "499", "code": ""}
    before = counter(api.get("/metrics").text, TOTAL, **labels)
    start = len(gateway_service.logs())
    rid = f"gone-{uuid.uuid4().hex}"
    head = (
        f"POST {route} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: 100000\r\nX-Request-Id: {rid}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway_service.port)) as sock:
        sock.sendall(head.encode() + b'{"name": "' + b"A" * 1000)
    # Wait for the gateway to log the request (generous: only a hang reaches it).
    deadline = time.monotonic() + 30
    while not (
        done := [e for e in log_lines(gateway_service, start) if e.get("request_id") == rid]
    ):
        assert time.monotonic() < deadline, gateway_service.logs()[start:]
        time.sleep(0.05)
    assert done[0]["event"] == "request done" and done[0]["status"] == 499
    assert counter(api.get("/metrics").text, TOTAL, **labels) - before == 1
    written = gateway_service.logs()[start:]
    assert "Traceback" not in written and "ClientDisconnect" not in written
