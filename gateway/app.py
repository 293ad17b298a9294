"""The REST gateway: the app, its error handlers, request tracking, and the area routers."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway import metrics, schemas
from gateway.auth import Authenticator, load_keys
from gateway.problems import (
    Problem,
    answer,
    client_left,
    handle_http_exception,
    handle_problem,
    handle_validation_error,
)
from gateway.routes import analysis, galleries, service, subjects, verify
from gateway.score_client import ScoreClient
from gateway.settings import GatewaySettings
from services.common.logging import REQUEST_ID_HEADER, request_id_from

log = structlog.get_logger(__name__)
# Errors are answered as application/problem+json only; FastAPI's `model` would also claim
# application/json and leave problem+json without a schema, so the schema is named here.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 500, 503, 504)
}
ROUTERS = (service, analysis, galleries, subjects, verify)


def path_problem(request: Request) -> Problem | None:
    """What is wrong with an API path's percent-escapes, found before the path is routed.

    An encoded slash (`%2F`) is decoded into a '/' that splits one name into two segments:
    the request would reach another route or none. Escapes that are not UTF-8 (`%FF`) are
    decoded with replacement characters: a subject would be stored under an id the client
    never sent.
    """
    raw: bytes = request.scope.get("raw_path") or b""
    if not request.url.path.startswith("/api/"):
        return None
    if b"%2f" in raw.lower():
        return Problem(
            400,
            "invalid_argument",
            "the path holds an encoded '/' (%2F): gallery names and subject ids cannot hold '/'",
            {"field": "path"},
        )
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return Problem(
            400, "invalid_argument", "the path is not UTF-8 once percent-decoded", {"field": "path"}
        )
    return None


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
        problem = path_problem(request)
        response: Response = answer(request, problem) if problem else await call_next(request)
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


def with_problem_schema(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """app.openapi, with the Problem schema that PROBLEM_RESPONSES refers to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        document["components"]["schemas"].setdefault("Problem", schemas.Problem.model_json_schema())
        return document

    return openapi


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
    )
    app.openapi = with_problem_schema(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.auth = Authenticator(load_keys(settings))
    app.add_exception_handler(Problem, handle_problem)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(ClientDisconnect, client_left)
    app.middleware("http")(track_request)
    for area in ROUTERS:
        app.include_router(area.router)
    docs_static = importlib.resources.files("fastapi_offline") / "static"
    app.mount("/api/docs-static", StaticFiles(directory=str(docs_static)), name="docs-static")
    if settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    return app
