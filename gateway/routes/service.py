"""The service itself: version, health, metrics and the API docs."""

from __future__ import annotations

import importlib.metadata

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from gateway import schemas
from gateway.dependencies import READ, Score

router = APIRouter()


@router.get("/api/v1/version", dependencies=[READ], tags=["service"])
async def version(score: Score) -> schemas.VersionResponse:
    info = await score.service_info()
    return schemas.VersionResponse(
        version=importlib.metadata.version("facescore"),
        detector=schemas.model(info.detector),
        recognizer=schemas.model(info.recognizer),
        collection=info.collection,
        threshold=info.default_threshold,
    )


@router.get("/api/health/live", tags=["service"])
async def live() -> schemas.LiveResponse:
    """The process answers: no dependency is asked. Container health checks and liveness
    probes use it, so a score or Qdrant outage never marks (or restarts) the gateway;
    /api/health is the readiness report."""
    return schemas.LiveResponse(status="ok")


@router.get("/api/health", tags=["service"], responses={503: {"model": schemas.HealthResponse}})
async def health(score: Score, response: Response) -> schemas.HealthResponse:
    report = await score.health()
    if not report.ok:
        response.status_code = 503
    return schemas.HealthResponse(
        status="ok" if report.ok else "degraded",
        dependencies={
            d.name: schemas.DependencyState(ok=d.ok, detail=d.detail) for d in report.dependencies
        },
    )


@router.get("/api/docs", include_in_schema=False)
async def docs() -> Response:
    # Swagger UI 5 (it reads OpenAPI 3.1) from the installed fastapi-offline package:
    # the docs work offline, with no CDN.
    return get_swagger_ui_html(
        openapi_url="/api/openapi.json",
        title="facescore API",
        swagger_js_url="/api/docs-static/swagger-ui-bundle.js",
        swagger_css_url="/api/docs-static/swagger-ui.css",
        swagger_favicon_url="/api/docs-static/favicon.png",
    )


async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics when the scraper asks for it."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), media_type=content_type)


# Both spellings: the docs and Prometheus's default say /metrics, earlier releases /metrics/.
for path in ("/metrics", "/metrics/"):
    router.add_api_route(path, metrics, methods=["GET"], include_in_schema=False)
