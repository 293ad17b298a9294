"""A FAKE Qdrant server: only the REST endpoints `facescore admin` uses, with canned snapshots.

The Qdrant server binary is not available here, so the server-mode backup and restore are
tested against this stand-in. It answers as Qdrant's REST API does for these calls (the same
paths, query parameters, api-key header and JSON envelopes), but a "snapshot" is just the
bytes the test put there: nothing about Qdrant's snapshot format is checked.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"result": result, "status": "ok", "time": 0.001})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": {"error": message}, "time": 0.0}, status_code=status)


@dataclass
class Upload:
    collection: str
    params: dict[str, str]
    filename: str
    content: bytes


@dataclass
class FakeQdrant:
    """Collections hold the bytes their snapshot will contain, and their metadata."""

    api_key: str
    collections: dict[str, bytes] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[tuple[str, str], bytes] = field(default_factory=dict)
    deleted_snapshots: list[tuple[str, str]] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        async def check_key(request: Request) -> JSONResponse | None:
            self.requests.append(f"{request.method} {request.url.path}")
            if request.headers.get("api-key") != self.api_key:
                return _error(401, "Must provide an API key or an Authorization bearer token")
            return None

        async def list_collections(request: Request) -> Response:
            if (denied := await check_key(request)) is not None:
                return denied
            return _ok({"collections": [{"name": name} for name in self.collections]})

        async def get_collection(request: Request) -> Response:
            if (denied := await check_key(request)) is not None:
                return denied
            name = request.path_params["name"]
            if name not in self.collections:
                return _error(404, f"Collection `{name}` doesn't exist!")
            # Only the part `facescore admin` reads; real Qdrant answers much more.
            return _ok({"status": "green", "config": {"metadata": self.metadata.get(name)}})

        async def exists(request: Request) -> Response:
            if (denied := await check_key(request)) is not None:
                return denied
            return _ok({"exists": request.path_params["name"] in self.collections})

        async def create_snapshot(request: Request) -> Response:
            if (denied := await check_key(request)) is not None:
                return denied
            name = request.path_params["name"]
            if name not in self.collections:
                return _error(404, f"Collection `{name}` doesn't exist!")
            content = self.collections[name]
            snapshot = f"{name}-{len(self.snapshots)}-2024-01-01-00-00-00.snapshot"
            self.snapshots[(name, snapshot)] = content
            return _ok(
                {
                    "name": snapshot,
                    "creation_time": "2024-01-01T00:00:00",
                    "size": len(content),
                    "checksum": hashlib.sha256(content).hexdigest(),
                }
            )

        async def snapshot(request: Request) -> Response:
            if (denied := await check_key(request)) is not None:
                return denied
            key = (request.path_params["name"], request.path_params["snapshot"])
            if key not in self.snapshots:
                return _error(404, "Snapshot not found")
            if request.method == "DELETE":
                del self.snapshots[key]
                self.deleted_snapshots.append(key)
                return _ok(True)
            return Response(self.snapshots[key], media_type="application/octet-stream")

        async def upload(request: Request) -> Response:
            if (denied := await check_key(request)) is not None:
                return denied
            name = request.path_params["name"]
            form = await request.form()
            part = form.get("snapshot")
            if part is None or isinstance(part, str):
                return _error(400, "no snapshot file in the form")
            content = await part.read()
            checksum = request.query_params.get("checksum")
            if checksum and checksum != hashlib.sha256(content).hexdigest():
                return _error(400, "Snapshot checksum mismatch")
            self.uploads.append(
                Upload(name, dict(request.query_params), part.filename or "", content)
            )
            self.collections[name] = content
            return _ok(True)

        return Starlette(
            routes=[
                Route("/collections", list_collections, methods=["GET"]),
                Route("/collections/{name}", get_collection, methods=["GET"]),
                Route("/collections/{name}/exists", exists, methods=["GET"]),
                Route("/collections/{name}/snapshots/upload", upload, methods=["POST"]),
                Route("/collections/{name}/snapshots", create_snapshot, methods=["POST"]),
                Route(
                    "/collections/{name}/snapshots/{snapshot}",
                    snapshot,
                    methods=["GET", "DELETE"],
                ),
            ]
        )


class RunningFake:
    """The fake served by uvicorn in a thread on a loopback port."""

    def __init__(self, fake: FakeQdrant) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            fake.port = int(sock.getsockname()[1])
        self.fake = fake
        config = uvicorn.Config(
            fake.app(), host="127.0.0.1", port=fake.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake Qdrant did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
