"""The REST gateway: the app, its error handlers, request tracking, and the area routers."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import metrics, schemas
from gateway.auth import Authenticator, load_keys
from gateway.problems import (
    Problem,
    handle_http_exception,
    handle_problem,
    handle_validation_error,
)
from gateway.routes import analysis, galleries, service, subjects, verify
from gateway.score_client import ScoreClient
from gateway.settings import GatewaySettings
from services.common.logging import REQUEST_ID_HEADER, request_id_from

log = structlog.get_logger(__name__)
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
ROUTERS = (service, analysis, galleries, subjects, verify)


def utf8_path(request: Request) -> None:
    """Refuse a path whose percent-escapes are not UTF-8 (`%FF`).

    The server decodes them with replacement characters: a subject enrolled under such a
    path would be stored under an id the client never sent.
    """
    raw = request.scope.get("raw_path")
    if raw is None:
        return
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(
            400,
            "invalid_argument",
            "the path is not UTF-8 once percent-decoded",
            {"field": "path"},
        ) from None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    if not app.state.auth.enabled:
        log.warning(
            "API keys are off: anyone who reaches this gateway can read and change "
            "galleries; set GATEWAY_API_KEYS or GATEWAY_API_KEYS_FILE"
        )
    app.state.score = ScoreClient(
        settings.score_target, settings.deadline_s, settings.retry_after_s
    )
    yield
    await app.state.score.close()


async def track_request(request: Request, call_next: Any) -> Response:
    """Gives the request its id (logged, sent to score, answered), counts and logs it."""
    rid = request_id_from([(REQUEST_ID_HEADER, request.headers.get(REQUEST_ID_HEADER))])
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    status = 500  # unless call_next answers: an error no handler turned into a response
    try:
        response: Response = await call_next(request)
        status = response.status_code
    finally:
        elapsed = time.perf_counter() - started
        route = metrics.observe(request, status, elapsed)
        quiet = route in metrics.QUIET_ROUTES and status < 400
        (log.debug if quiet else log.info)(
            "request done",
            method=request.method,
            path=request.url.path,
            status=status,
            ms=round(elapsed * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers[REQUEST_ID_HEADER] = rid
    return response


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    app = FastAPI(
        title="facescore",
        version=importlib.metadata.version("facescore"),
        description="Face detection, enrollment, identification and verification.",
        docs_url=None,
        openapi_url="/api/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
        dependencies=[Depends(utf8_path)],
    )
    app.state.settings = settings
    app.state.auth = Authenticator(load_keys(settings))
    app.add_exception_handler(Problem, handle_problem)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.middleware("http")(track_request)
    for area in ROUTERS:
        app.include_router(area.router)
    docs_static = importlib.resources.files("fastapi_offline") / "static"
    app.mount("/api/docs-static", StaticFiles(directory=str(docs_static)), name="docs-static")
    app.mount("/metrics", make_asgi_app())
    if settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    return app
