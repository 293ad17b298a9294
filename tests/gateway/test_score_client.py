"""The score client: score down is 503 with Retry-After, naming score and nothing internal."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx

from tests.conftest import ServiceProcess, free_port
from tests.gateway.rest import problem

StartService = Callable[..., ServiceProcess]


def test_score_down_is_503_with_retry_after(start_service: StartService) -> None:
    service = start_service(
        "gateway", wait=False, GATEWAY_SCORE_TARGET=f"dns:///127.0.0.1:{free_port()}"
    )
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=service.url, timeout=30) as api:
        while True:
            try:
                health = api.get("/api/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        # The process itself is fine: container health checks and liveness probes pass.
        live = api.get("/api/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        rid = f"down-{uuid.uuid4().hex}"
        answer = api.get("/api/v1/galleries", headers={"X-Request-Id": rid})
        down = problem(answer, 503, "dependency_unavailable")
        # The caller learns which dependency failed; its address and gRPC's words are logged.
        assert down["dependency"] == "score"
        assert down["detail"] == "score is unavailable (UNAVAILABLE)"
        assert api.get("/api/v1/galleries").headers["retry-after"].isdigit()
    logged = [json.loads(line) for line in service.logs().splitlines() if rid in line]
    failed = [entry for entry in logged if entry["event"] == "score call failed"]
    assert failed and "127.0.0.1" in str(failed[0]["detail"])
    assert "API keys are off" in service.logs()
