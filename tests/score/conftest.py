"""Redis for the score service's tests: a real redis-server, or the one REDIS_URL names."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from facescore.devtools.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis shared by the session's tests: REDIS_URL if set, else a redis-server we start."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that kill, pause or restart it."""
    with RedisServer() as server:
        yield server
