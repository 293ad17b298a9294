"""Fixtures of the gateway tests: an HTTP client of the whole stack."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServiceProcess


@pytest.fixture()
def api(gateway_service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_service.url, timeout=30) as client:
        yield client
