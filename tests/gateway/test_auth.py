"""API keys: parsing, hashing, keys made by `facescore apikey`, and every route's scope."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from gateway.app import ROUTERS
from gateway.auth import Scope, hash_key, new_key_entry, parse_entries
from tests.conftest import REPO, ServiceProcess
from tests.gateway.rest import problem


def test_new_key_entry_round_trips_without_storing_the_key() -> None:
    key, entry = new_key_entry("ops", ["read", "write"])
    assert key not in entry
    keys = parse_entries(entry)
    assert keys[hash_key(key)].name == "ops"
    assert keys[hash_key(key)].scopes == {Scope.READ, Scope.WRITE}


def test_plain_and_hashed_entries_from_env_or_file() -> None:
    keys = parse_entries(
        "a:secret:read, b:sha256:" + hash_key("other") + ":admin+read\n# comment\n\n"
    )
    assert set(keys) == {hash_key("secret"), hash_key("other")}


@pytest.mark.parametrize(
    "entry", ["justaname", "a:secret:root", "a:secret:", "a:sha256:abc:read", "a:b:c:d:e"]
)
def test_bad_entries_are_refused_with_a_message(entry: str) -> None:
    with pytest.raises(ValueError, match="API key"):
        parse_entries(entry)


# Every route with every kind of key, against the table in docs/rest-api.md.

COLUMNS = ("no key", "wrong key", "read", "write", "admin")
KEYS = {"wrong key": "k-unknown", "read": "k-read", "write": "k-write", "admin": "k-admin"}
DOC = (REPO / "docs" / "rest-api.md").read_text()
SCOPE_ROWS = re.findall(
    r"^\| (GET|POST|DELETE) \| (/\S*) \| (\d{3}) \| (\d{3}) \| (\d{3}) \| (\d{3}) \| (\d{3}) \|$",
    DOC,
    re.MULTILINE,
)
Request = tuple[str, dict[str, Any]]  # the URL, and httpx's keyword arguments


@dataclass
class Stack:
    """A gateway with keys, a gallery holding one subject, and a key that may do anything."""

    api: httpx.Client
    image_base64: str
    gallery: str = field(default_factory=lambda: f"scopes-{uuid.uuid4().hex[:12]}")

    def setup(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        reply = self.api.request(method, url, headers={"X-API-Key": "k-all"}, **kwargs)
        assert reply.status_code < 300, reply.text
        return reply

    def new_gallery(self) -> str:
        name = f"scopes-{uuid.uuid4().hex[:12]}"
        self.setup("POST", "/api/v1/galleries", json={"name": name})
        return name

    def enroll(self, gallery: str, subject: str) -> str:
        url = f"/api/v1/galleries/{gallery}/subjects/{subject}/faces"
        return str(
            self.setup("POST", url, json={"image_base64": self.image_base64}).json()["face_id"]
        )


def photo_json(stack: Stack, **fields: str) -> dict[str, Any]:
    return {"json": {"image_base64": stack.image_base64, **fields}}


def fresh_subject(stack: Stack) -> Request:
    gallery = stack.new_gallery()
    stack.enroll(gallery, "gone")
    return f"/api/v1/galleries/{gallery}/subjects/gone", {}


def fresh_face(stack: Stack) -> Request:
    gallery = stack.new_gallery()
    return f"/api/v1/galleries/{gallery}/faces/{stack.enroll(gallery, 'someone')}", {}


SUBJECT = "/api/v1/galleries/{gallery}/subjects/{subject_id}"
# A valid request of every route; destructive ones get a resource of their own each time.
REQUESTS: dict[tuple[str, str], Callable[[Stack], Request]] = {
    ("GET", "/api/v1/version"): lambda s: ("/api/v1/version", {}),
    ("POST", "/api/v1/analyze"): lambda s: ("/api/v1/analyze", photo_json(s)),
    ("GET", "/api/v1/galleries"): lambda s: ("/api/v1/galleries", {}),
    ("POST", "/api/v1/galleries"): lambda s: (
        "/api/v1/galleries",
        {"json": {"name": f"scopes-{uuid.uuid4().hex[:12]}"}},
    ),
    ("DELETE", "/api/v1/galleries/{gallery}"): lambda s: (
        f"/api/v1/galleries/{s.new_gallery()}",
        {},
    ),
    ("GET", "/api/v1/galleries/{gallery}/subjects"): lambda s: (
        f"/api/v1/galleries/{s.gallery}/subjects",
        {},
    ),
    ("GET", SUBJECT): lambda s: (f"/api/v1/galleries/{s.gallery}/subjects/ada", {}),
    ("DELETE", SUBJECT): fresh_subject,
    ("POST", SUBJECT + "/faces"): lambda s: (
        f"/api/v1/galleries/{s.gallery}/subjects/bo/faces",
        photo_json(s),
    ),
    ("DELETE", "/api/v1/galleries/{gallery}/faces/{face_id}"): fresh_face,
    ("POST", "/api/v1/galleries/{gallery}/identify"): lambda s: (
        f"/api/v1/galleries/{s.gallery}/identify",
        photo_json(s),
    ),
    ("POST", "/api/v1/verify"): lambda s: (
        "/api/v1/verify",
        photo_json(s, gallery=s.gallery, subject_id="ada"),
    ),
    **{
        ("GET", path): (lambda p: lambda s: (p, {}))(path)
        for path in (
            "/api/health",
            "/api/health/live",
            "/metrics",
            "/metrics/",
            "/api/openapi.json",
            "/api/docs",
        )
    },
}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the gateway serves, its OpenAPI document included."""
    routes = {
        (method, route.path)
        for area in ROUTERS
        for route in area.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    return routes | {("GET", "/api/openapi.json")}


def test_the_table_covers_every_route_and_agrees_with_the_route_list() -> None:
    table = {(method, path) for method, path, *_ in SCOPE_ROWS}
    assert len(table) == len(SCOPE_ROWS), "a route is listed twice"
    assert table == served_routes() == set(REQUESTS)
    # The route list's scope column says the same as the table.
    listed = re.findall(
        r"^\| (GET|POST|DELETE) \| (/\S*)[^|]*\| (read|write|admin|none) \|", DOC, re.MULTILINE
    )
    assert len(listed) == 15
    statuses = {
        (method, path): dict(zip(COLUMNS, rest, strict=True)) for method, path, *rest in SCOPE_ROWS
    }
    for method, path, scope in listed:
        row = statuses[(method, path)]
        for column in COLUMNS:
            allowed = scope == "none" or column == scope
            assert (int(row[column]) < 400) == allowed, (method, path, column)


@pytest.fixture(scope="module")
def stack(
    start_service: Callable[..., ServiceProcess],
    score_for_gateway: ServiceProcess,
    photo: Callable[[str], bytes],
) -> Iterator[Stack]:
    keys = "r:k-read:read,w:k-write:write,a:k-admin:admin,all:k-all:read+write+admin"
    service = start_service(
        "gateway", GATEWAY_SCORE_TARGET=f"dns:///{score_for_gateway.address}", GATEWAY_API_KEYS=keys
    )
    with httpx.Client(base_url=service.url, timeout=30) as api:
        stack = Stack(api, base64.b64encode(photo("yaoming.jpg")).decode())
        stack.setup("POST", "/api/v1/galleries", json={"name": stack.gallery})
        stack.enroll(stack.gallery, "ada")
        yield stack


@pytest.mark.parametrize("row", SCOPE_ROWS, ids=[f"{m} {p}" for m, p, *_ in SCOPE_ROWS])
def test_every_route_with_every_key(stack: Stack, row: tuple[str, ...]) -> None:
    method, path, *expected = row
    for column, status in zip(COLUMNS, expected, strict=True):
        url, kwargs = REQUESTS[(method, path)](stack)
        headers = {"X-API-Key": KEYS[column]} if column in KEYS else {}
        reply = stack.api.request(method, url, headers=headers, **kwargs)
        assert reply.status_code == int(status), (column, reply.text)
        if reply.status_code in (401, 403):
            denied = {"no key": "missing_api_key", "wrong key": "invalid_api_key"}
            assert reply.json()["code"] == denied.get(column, "insufficient_scope"), column


def test_api_keys_and_scopes(
    start_service: Callable[..., ServiceProcess], score_for_gateway: ServiceProcess
) -> None:
    keys = (
        "reader:r-secret:read,admin:sha256:"
        + __import__("hashlib").sha256(b"a-secret").hexdigest()
        + ":read+write+admin"
    )
    service = start_service(
        "gateway", GATEWAY_SCORE_TARGET=f"dns:///{score_for_gateway.address}", GATEWAY_API_KEYS=keys
    )
    with httpx.Client(base_url=service.url, timeout=30) as api:
        problem(api.get("/api/v1/galleries"), 401, "missing_api_key")
        problem(api.get("/api/v1/galleries", headers={"X-API-Key": "nope"}), 401, "invalid_api_key")
        assert api.get("/api/v1/galleries", headers={"X-API-Key": "r-secret"}).status_code == 200
        problem(
            api.post("/api/v1/galleries", json={"name": "k1"}, headers={"X-API-Key": "r-secret"}),
            403,
            "insufficient_scope",
        )
        created = api.post(
            "/api/v1/galleries",
            json={"name": f"k{time.time_ns() % 10**6}"},
            headers={"X-API-Key": "a-secret"},
        )
        assert created.status_code == 201
        assert api.get("/api/health").status_code == 200  # probes need no key
    assert "API keys are off" not in service.logs()
