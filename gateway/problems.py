"""Errors as application/problem+json (RFC 9457) with a stable `code`."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

PROBLEM_TYPE = "https://facescore.dev/problems/"

# HTTP status of every reason a service can give; a user's mistake never maps to a 5xx.
STATUS_OF_REASON = {
    "empty_image": 400,
    "corrupt_image": 400,
    "image_too_many_pixels": 400,
    "image_too_complex": 400,
    "invalid_argument": 400,
    "invalid_crop": 400,
    "too_many_crops": 400,
    "invalid_metadata": 400,
    "no_face": 400,
    "multiple_faces": 400,
    "face_quality_too_low": 400,
    "gallery_not_found": 404,
    "subject_not_found": 404,
    "face_not_found": 404,
    "gallery_exists": 409,
    "image_too_large": 413,
    "unsupported_image_format": 415,
    "dependency_unavailable": 503,
    "not_ready": 503,
    "model_failed": 503,
    "queue_full": 503,
    "deadline_exceeded": 504,
    "embedding_model_mismatch": 500,
    "internal": 500,
}

# pydantic's errors for a string outside its pattern or length: the gateway's name rules.
NAME_RULES = frozenset({"string_pattern_mismatch", "string_too_short", "string_too_long"})

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal error",
    503: "Service unavailable",
    504: "Gateway timeout",
}


class Problem(Exception):
    """An error answered as problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        extras: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extras = extras or {}
        self.headers = headers or {}


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + problem.code,
        "title": TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        **problem.extras,
    }
    if instance:
        body["instance"] = instance
    return JSONResponse(
        body,
        status_code=problem.status,
        media_type="application/problem+json",
        headers=problem.headers,
    )


def answer(request: Request, problem: Problem) -> JSONResponse:
    """The problem as the response to `request`; its code is kept for the request metrics."""
    request.state.problem_code = problem.code
    return problem_response(problem, request.url.path)


async def handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return answer(request, exc)


async def client_left(request: Request, exc: Exception) -> Response:
    """The client went away mid-request: nobody reads this answer, the logs and metrics do.

    499 is nginx's code for it; without this the error would be logged as a crash and
    counted as a 500.
    """
    return Response(status_code=499)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):
        # FastAPI reports a body cut short by the client as a 400 it cannot send anyway.
        return await client_left(request, exc.__cause__)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    problem = Problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
    return answer(request, problem)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if len(errors) == 1 and errors[0].get("type") in NAME_RULES:
        # A string of the right type that breaks a name's rules: the same answer score gives
        # for a name it refuses (docs/rest-api.md, Names).
        field = str(errors[0]["loc"][-1])
        detail = f"{field} is not a valid name: {errors[0].get('msg', '')}"
        return answer(request, Problem(400, "invalid_argument", detail, {"field": field}))
    fields = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
        for e in errors
    ]
    problem = Problem(422, "validation_error", "the request is not valid", {"errors": fields})
    return answer(request, problem)
