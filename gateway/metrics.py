"""The gateway's own Prometheus metrics: HTTP requests by route, status and problem code."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from starlette.requests import Request

HTTP_REQUESTS = Counter(
    "facescore_http_requests",
    "HTTP requests answered by the gateway, by route, method, status and problem code.",
    ["route", "method", "status", "code"],
)
HTTP_LATENCY = Histogram(
    "facescore_http_request_seconds",
    "HTTP request latency at the gateway, by route and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Any other method name is counted as "other": clients cannot grow the label set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes answered often and logged at debug level while they succeed.
QUIET_ROUTES = frozenset({"/api/health", "/api/health/live", "/metrics", "/metrics/"})


def route_of(request: Request) -> str:
    """The route's template (/api/v1/galleries/{gallery}), never the raw path.

    Paths no API route matched share one label each, so that clients cannot grow the
    metric's label set by asking for made-up paths.
    """
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path = request.url.path
    if path.startswith("/api/docs-static/"):
        return "/api/docs-static"
    return "unmatched" if path.startswith("/api") else "static"


def observe(request: Request, status: int, seconds: float) -> str:
    """Count one answered request; returns its route label."""
    route = route_of(request)
    method = request.method if request.method in METHODS else "other"
    code = getattr(request.state, "problem_code", "") if status >= 400 else ""
    HTTP_REQUESTS.labels(route, method, str(status), code).inc()
    HTTP_LATENCY.labels(route, method).observe(seconds)
    return route
