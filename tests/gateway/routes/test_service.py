"""Service routes: version, API docs, health, metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServiceProcess

StartService = Callable[..., ServiceProcess]


def test_version_and_docs(api: httpx.Client) -> None:
    version = api.get("/api/v1/version").json()
    assert version["recognizer"]["name"] == "w600k_mbf" and version["threshold"] == pytest.approx(
        0.4
    )
    assert version["detector"]["providers"] == ["CPUExecutionProvider"]
    spec = api.get("/api/openapi.json").json()
    assert "/api/v1/galleries/{gallery}/identify" in spec["paths"]
    docs = api.get("/api/docs")
    assert docs.status_code == 200 and "/api/docs-static/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert api.get("/api/docs-static/swagger-ui-bundle.js").status_code == 200


def test_health_and_metrics(api: httpx.Client) -> None:
    health = api.get("/api/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert {"score", "detect", "embed", "qdrant", "cache"} <= set(body["dependencies"])
    assert "X-Request-Id" in health.headers or "x-request-id" in health.headers
    metrics = api.get("/metrics/")
    assert metrics.status_code == 200 and "python_info" in metrics.text
