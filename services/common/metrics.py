"""Prometheus metrics shared by the services, and the side port that serves them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

GRPC_REQUESTS = Counter(
    "facescore_grpc_requests",
    "gRPC calls handled, by method, status code and error reason.",
    ["method", "code", "reason"],
)
GRPC_LATENCY = Histogram(
    "facescore_grpc_request_seconds",
    "gRPC call latency, by method.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "facescore_batch_size",
    "Items per model run.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
MODEL_RUNS = Counter("facescore_model_runs", "Model invocations.", ["model"])
MODEL_SECONDS = Histogram(
    "facescore_model_seconds",
    "Time spent inside one model run.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
DECODES_AHEAD = Counter(
    "facescore_decodes_ahead",
    "Large JPEGs alone in detect decoded at 1/2 while the detector ran, by whether their "
    "faces' crops used that decode (used), needed none finer (unused) or needed a finer one "
    "(too_coarse); machine_busy: not decoded ahead, more threads runnable than cores.",
    ["outcome"],
)
QUEUE_DEPTH = Gauge("facescore_queue_depth", "Items waiting for a model run.", ["model"])


def start_side_port(
    host: str, port: int, health: Callable[[], tuple[bool, dict[str, Any]]]
) -> ThreadingHTTPServer:
    """Serve /metrics (Prometheus) and /health (JSON details, 200 or 503) on a side port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest())
            elif self.path.split("?")[0] == "/health":
                ok, details = health()
                self._send(200 if ok else 503, "application/json", json.dumps(details).encode())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds would drown the logs."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
