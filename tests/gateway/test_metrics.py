"""The gateway's request metrics: by route template, status and problem code."""

from __future__ import annotations

import httpx

from tests.conftest import ServiceProcess
from tests.gateway.rest import counter, problem

TOTAL = "facescore_http_requests_total"


def test_request_metrics_by_route_status_and_code(
    api: httpx.Client, gateway_service: ServiceProcess, score_for_gateway: ServiceProcess
) -> None:
    route = "/api/v1/galleries/{gallery}/subjects"
    missing = {"route": route, "method": "GET", "status": "404", "code": "gallery_not_found"}
    listed = {"route": "/api/v1/galleries", "method": "GET", "status": "200", "code": ""}
    before = api.get("/metrics/").text
    for _ in range(3):
        problem(api.get("/api/v1/galleries/nowhere-metrics/subjects"), 404, "gallery_not_found")
    assert api.get("/api/v1/galleries").status_code == 200
    problem(api.get("/api/v1/made-up-path-7f3a"), 404, "not_found")
    for _ in range(3):
        assert api.get("/api/health").status_code == 200
    after = api.get("/metrics/").text
    assert counter(after, TOTAL, **missing) - counter(before, TOTAL, **missing) == 3
    assert counter(after, TOTAL, **listed) - counter(before, TOTAL, **listed) == 1
    assert counter(after, "facescore_http_request_seconds_count", route=route, method="GET") >= 3
    # Made-up paths share one label: clients cannot grow the label set.
    assert "made-up-path-7f3a" not in after
    assert counter(after, TOTAL, route="unmatched", method="GET", status="404", code="not_found")
    # Successful probes are counted but not logged at info level; failures are.
    logs = gateway_service.logs()
    assert '"path": "/api/v1/galleries/nowhere-metrics/subjects"' in logs
    assert '"path": "/api/health"' not in logs
    score_logs = score_for_gateway.logs()
    assert "/facescore.v1.ScoreService/ListGalleries" in score_logs
    assert "/facescore.v1.ScoreService/GetHealth" not in score_logs
    assert "/grpc.health.v1.Health/Check" not in score_logs


def test_made_up_methods_share_one_label(api: httpx.Client) -> None:
    labels = {"route": "unmatched", "method": "other", "status": "405"}
    labels["code"] = "method_not_allowed"
    before = counter(api.get("/metrics").text, TOTAL, **labels)
    for method in ("FROB", "XYZZY7"):
        problem(api.request(method, "/api/v1/galleries"), 405, "method_not_allowed")
    after = api.get("/metrics").text
    assert counter(after, TOTAL, **labels) - before == 2
    assert "FROB" not in after and "XYZZY7" not in after
