"""Fixtures of the gateway tests: an HTTP client of the whole stack, a fresh gallery."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServiceProcess


@pytest.fixture()
def api(gateway_service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_service.url, timeout=30) as client:
        yield client


_names = iter(range(10_000))


@pytest.fixture()
def gallery(api: httpx.Client) -> str:
    name = f"rest{next(_names)}-{int(time.time() * 1000) % 100000}"
    assert api.post("/api/v1/galleries", json={"name": name}).status_code == 201
    return name
