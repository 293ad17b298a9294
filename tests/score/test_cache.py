"""The analysis cache: key shape, the in-process LRU, and Redis through outages (a real Redis)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from facescore.devtools.redis_server import RedisServer, free_port
from services.score import cache as cache_module
from services.score.cache import (
    AnalysisCache,
    MemoryCache,
    RedisCache,
    cache_key,
    make_cache,
)
from services.score.settings import ScoreSettings

SHA_A = hashlib.sha256(b"photo a").hexdigest()
SHA_B = hashlib.sha256(b"photo b").hexdigest()


def requests(result: str) -> float:
    return REGISTRY.get_sample_value("facescore_cache_requests_total", {"result": result}) or 0.0


def writes(result: str) -> float:
    return REGISTRY.get_sample_value("facescore_cache_writes_total", {"result": result}) or 0.0


def cache_up_gauge() -> float | None:
    return REGISTRY.get_sample_value("facescore_cache_up")


def unique_key() -> str:
    """Keys no other test (or an earlier run against a shared REDIS_URL) has written."""
    return cache_key("test-model", "p", hashlib.sha256(uuid.uuid4().bytes).hexdigest())


def events(logs: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_redis() -> AsyncIterator[Callable[..., RedisCache]]:
    """Factory for RedisCache with test-friendly timings; every cache is closed afterwards."""
    made: list[RedisCache] = []

    def make(url: str, **overrides: Any) -> RedisCache:
        # A generous timeout: a healthy Redis on a busy machine must not read as down.
        options: dict[str, Any] = {"ttl_s": 60, "timeout_s": 5, "retry_s": 0.2, **overrides}
        cache = RedisCache(url, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


# Timeouts below only catch a hang: the outcome is decided by events, never by a clock.
HANG_S = 60


async def wait_until_cached(cache: RedisCache) -> None:
    """Wait until a set followed by a get hits again."""
    async with asyncio.timeout(HANG_S):
        while True:
            key = unique_key()
            await cache.set(key, b"back")
            if await cache.get(key) == b"back":
                return
            await asyncio.sleep(0.02)


class PingSpy:
    """Counts the cache's PINGs (its start and its retries), so a test waits for retries."""

    def __init__(self, cache: RedisCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._pinged = asyncio.Condition()
        ping = cache._client.ping

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await ping(*args, **kwargs)
            finally:
                async with self._pinged:
                    self.count += 1
                    self._pinged.notify_all()

        monkeypatch.setattr(cache._client, "ping", counted)

    async def more(self, n: int) -> None:
        """Wait for n more PINGs to finish (answered or failed)."""
        target = self.count + n
        async with asyncio.timeout(HANG_S), self._pinged:
            await self._pinged.wait_for(lambda: self.count >= target)


class StepClock:
    """The cache module's clock, moved by the test: warning intervals without real waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


# --- keys ---------------------------------------------------------------------------------


def test_key_is_short_namespaced_and_deterministic() -> None:
    key = cache_key("buffalo_l:3f2a", "det=640;thr=0.5", SHA_A)
    assert re.fullmatch(r"facescore:analysis:v1:[0-9a-f]{16}:[0-9a-f]{64}", key)
    assert key.endswith(SHA_A)
    assert key == cache_key("buffalo_l:3f2a", "det=640;thr=0.5", SHA_A)
    assert len(key) < 110
    assert cache_key("m", "p", SHA_A.upper()) == cache_key("m", "p", SHA_A)


def test_key_changes_with_model_params_and_photo() -> None:
    keys = {
        cache_key("m1", "p", SHA_A),
        cache_key("m2", "p", SHA_A),
        cache_key("m1", "q", SHA_A),
        cache_key("m1", "p", SHA_B),
        # A separator inside either string must not make two pairs collide.
        cache_key("a|b", "c", SHA_A),
        cache_key("a", "b|c", SHA_A),
    }
    assert len(keys) == 6


@pytest.mark.parametrize("bad", ["", "abc", SHA_A[:-1], SHA_A + "0", "g" * 64])
def test_key_rejects_what_is_not_a_sha256_hexdigest(bad: str) -> None:
    with pytest.raises(ValueError):
        cache_key("m", "p", bad)


# --- in-process cache ---------------------------------------------------------------------


async def test_memory_hit_and_miss() -> None:
    cache = MemoryCache(1024, ttl_s=60)
    await cache.start()
    hits, misses = requests("hit"), requests("miss")
    assert await cache.get("k") is None
    await cache.set("k", b"value")
    assert await cache.get("k") == b"value"
    assert (requests("hit") - hits, requests("miss") - misses) == (1, 1)
    assert cache.kind == "memory"
    assert cache.status() == {
        "kind": "memory",
        "up": True,
        "entries": 1,
        "bytes": 1 + 5,
        "max_bytes": 1024,
    }
    assert isinstance(cache, AnalysisCache)


async def test_memory_evicts_least_recently_used_by_bytes() -> None:
    cache = MemoryCache(100, ttl_s=60)
    await cache.set("k1", b"a" * 38)  # 2 + 38 = 40
    await cache.set("k2", b"b" * 38)  # 80
    assert cache.size_bytes == 80
    assert await cache.get("k1") is not None  # k1 is now the most recently used
    await cache.set("k3", b"c" * 18)  # 80 + 20 = 100: fits exactly, nothing evicted
    assert (len(cache), cache.size_bytes) == (3, 100)
    await cache.set("k4", b"d")  # 100 + 3 > 100: the LRU entry, k2, goes
    assert await cache.get("k2") is None
    assert (len(cache), cache.size_bytes) == (3, 63)
    assert await cache.get("k1") == b"a" * 38
    assert await cache.get("k3") == b"c" * 18
    assert await cache.get("k4") == b"d"
    # Replacing a value accounts for the old size, not both.
    await cache.set("k4", b"dd")
    assert (len(cache), cache.size_bytes) == (3, 64)
    # 64 + 96 > 100: k1 (LRU after the gets above) goes, 24 + 96 still does not fit so k3
    # goes too, and 4 + 96 = 100 fits: k4 stays.
    await cache.set("k5", b"e" * 94)
    assert sorted(cache._entries) == ["k4", "k5"]
    assert cache.size_bytes == 100


async def test_memory_entry_of_exactly_the_budget_is_stored_larger_is_not() -> None:
    cache = MemoryCache(100, ttl_s=60)
    await cache.set("small", b"x")
    await cache.set("big", b"y" * 97)  # 3 + 97 = 100: evicts everything else
    assert (len(cache), cache.size_bytes) == (1, 100)
    await cache.set("big", b"y" * 98)  # 101: not stored, and the older value is gone too
    assert await cache.get("big") is None
    assert (len(cache), cache.size_bytes) == (0, 0)
    await cache.set("huge", b"z" * 10_000)
    assert (len(cache), cache.size_bytes) == (0, 0)


async def test_memory_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(1024, ttl_s=10, clock=clock)
    await cache.set("k", b"v")
    clock.now += 9.9
    assert await cache.get("k") == b"v"  # a hit does not extend the TTL
    clock.now += 0.1
    assert await cache.get("k") is None
    assert (len(cache), cache.size_bytes) == (0, 0)


async def test_memory_ttl_real_clock() -> None:
    # The default clock runs on its own: the entry expires without anyone moving it.
    cache = MemoryCache(1024, ttl_s=0.05)
    await cache.set("k", b"v")
    async with asyncio.timeout(HANG_S):
        while await cache.get("k") is not None:
            await asyncio.sleep(0.02)
    assert (len(cache), cache.size_bytes) == (0, 0)


async def test_memory_off_at_zero_bytes() -> None:
    cache = MemoryCache(0, ttl_s=60)
    await cache.start()
    await cache.set("k", b"v")
    assert await cache.get("k") is None
    assert cache.kind == "off"
    assert cache.status()["up"] is False
    assert len(cache) == 0
    await cache.close()


async def test_make_cache_picks_the_backend() -> None:
    memory = make_cache(ScoreSettings(cache_max_bytes=1000))
    assert isinstance(memory, MemoryCache) and memory.kind == "memory"
    assert make_cache(ScoreSettings(cache_max_bytes=0)).kind == "off"
    cache = make_cache(
        ScoreSettings(
            redis_url=SecretStr("redis://:secret@127.0.0.1:6399/2"),
            cache_ttl_s=7,
            redis_timeout_s=0.1,
            redis_retry_s=0.3,
        )
    )
    assert isinstance(cache, RedisCache) and cache.kind == "redis"
    assert (cache.ttl_s, cache.timeout_s, cache.retry_s) == (7, 0.1, 0.3)
    # The password stays out of health details and logs.
    assert cache.status()["target"] == "redis://127.0.0.1:6399/2"
    assert "secret" not in repr(cache.status())
    await cache.close()


# --- Redis --------------------------------------------------------------------------------


async def test_redis_roundtrip_with_ttl(
    redis_url: str, make_redis: Callable[..., RedisCache]
) -> None:
    cache = make_redis(redis_url, ttl_s=120)
    await cache.start()
    assert cache.status()["up"] is True
    assert cache_up_gauge() == 1
    key, value = unique_key(), bytes(range(256)) * 4  # opaque bytes, not text
    hits, misses = requests("hit"), requests("miss")
    assert await cache.get(key) is None
    await cache.set(key, value)
    assert await cache.get(key) == value
    assert (requests("hit") - hits, requests("miss") - misses) == (1, 1)

    import redis

    with redis.Redis.from_url(redis_url) as raw:
        ttl = raw.ttl(key)
        assert 0 < ttl <= 120
        assert raw.get(key) == value


async def test_redis_with_password(make_redis: Callable[..., RedisCache]) -> None:
    # Characters that must be percent-encoded in the URL, to show the URL carries them.
    with RedisServer(password="s3cret/pw@:") as server:
        cache = make_redis(server.url)
        await cache.start()
        assert cache.up
        key = unique_key()
        await cache.set(key, b"v")
        assert await cache.get(key) == b"v"
        with server.client() as raw:
            assert raw.ttl(key) > 0

        wrong = make_redis(server.url.replace("s3cret", "wrong"))
        await wrong.start()  # an authentication failure is "down", not an exception
        assert not wrong.up
        assert await wrong.get(key) is None
        assert "Authentication" in str(wrong.status()["last_error"]) or "WRONGPASS" in str(
            wrong.status()["last_error"]
        )


async def test_redis_killed_calls_return_at_once(
    redis_server: RedisServer, make_redis: Callable[..., RedisCache]
) -> None:
    cache = make_redis(redis_server.url)
    await cache.start()
    key = unique_key()
    await cache.set(key, b"v")
    assert await cache.get(key) == b"v"

    redis_server.kill()
    errors = requests("error")
    assert await cache.get(key) is None  # this call discovers the outage
    assert requests("error") - errors == 1
    assert not cache.up
    assert cache_up_gauge() == 0

    # Open circuit: calls return without touching the network (bypass, not error).
    bypass, errors = requests("bypass"), requests("error")
    for _ in range(20):
        assert await cache.get(key) is None
        await cache.set(key, b"v")
    assert requests("bypass") - bypass == 20
    assert requests("error") - errors == 0
    status = cache.status()
    assert status["up"] is False and status["last_error"]
    assert isinstance(status["down_for_s"], float)


async def test_redis_restart_resumes_and_logs_each_transition_once(
    redis_server: RedisServer,
    make_redis: Callable[..., RedisCache],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_redis(redis_server.url, retry_s=0.2)
    pings = PingSpy(cache, monkeypatch)
    await cache.start()
    with capture_logs() as logs:
        redis_server.kill()
        # Many requests in flight when Redis dies: still one "down" line.
        results = await asyncio.gather(*(cache.get(unique_key()) for _ in range(50)))
        assert results == [None] * 50
        assert not cache.up
        for _ in range(100):
            await cache.get(unique_key())
        await pings.more(3)  # failed retries keep the circuit open
        assert not cache.up

        redis_server.start()  # same port
        await wait_until_cached(cache)  # only the retry task can close the circuit
    assert cache.up and cache_up_gauge() == 1
    assert cache.status()["down_for_s"] is None

    down, up = events(logs, "redis cache down"), events(logs, "redis cache up")
    assert len(down) == 1 and down[0]["log_level"] == "warning"
    assert len(up) == 1 and up[0]["log_level"] == "info"
    assert up[0]["down_for_s"] > 0.5  # at least the three retry_s sleeps
    # The failed retries inside the 60 s warning interval are not logged.
    assert events(logs, "redis cache still down") == []
    assert "127.0.0.1" in down[0]["target"]


async def test_redis_still_down_warns_at_most_once_per_interval(
    make_redis: Callable[..., RedisCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = StepClock()
    monkeypatch.setattr(cache_module, "time", clock)
    cache = make_redis(f"redis://127.0.0.1:{free_port()}/0", retry_s=0.01, warn_every_s=30)
    pings = PingSpy(cache, monkeypatch)
    with capture_logs() as logs:
        await cache.start()
        await pings.more(5)  # retries inside the first interval: no warning
        assert events(logs, "redis cache still down") == []
        for interval in (1, 2):
            clock.now += 30
            await pings.more(5)  # the first retry past the interval warns, the rest do not
            assert len(events(logs, "redis cache still down")) == interval
    assert len(events(logs, "redis cache down")) == 1
    still = events(logs, "redis cache still down")
    assert all(entry["log_level"] == "warning" for entry in still)
    assert [entry["down_for_s"] for entry in still] == [30, 60]


async def test_redis_hung_is_cut_off_by_the_timeout(
    redis_server: RedisServer,
    make_redis: Callable[..., RedisCache],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Short enough to keep the test quick, long enough for a healthy Redis on a busy machine.
    cache = make_redis(redis_server.url, timeout_s=2, retry_s=0.2)
    await cache.start()
    key = unique_key()
    await cache.set(key, b"v")
    pings = PingSpy(cache, monkeypatch)
    redis_server.pause()
    try:
        # A paused Redis never answers: without the timeout this call would hang.
        async with asyncio.timeout(HANG_S):
            assert await cache.get(key) is None
        assert not cache.up
        bypass = requests("bypass")
        for _ in range(20):
            assert await cache.get(key) is None
        assert requests("bypass") - bypass == 20
        await pings.more(1)  # a retry times out too, and the circuit stays open
        assert not cache.up
    finally:
        redis_server.resume()
    await wait_until_cached(cache)
    assert await cache.get(key) == b"v"  # pausing lost nothing


async def test_redis_unreachable_at_start(make_redis: Callable[..., RedisCache]) -> None:
    port = free_port()  # nothing listens there
    cache = make_redis(f"redis://127.0.0.1:{port}/0", retry_s=0.1)
    await cache.start()
    assert not cache.up
    assert cache.status()["up"] is False
    lookups, stores = requests("bypass"), writes("bypass")
    assert await cache.get(unique_key()) is None
    await cache.set(unique_key(), b"v")
    # Both skipped Redis instead of waiting on it.
    assert (requests("bypass") - lookups, writes("bypass") - stores) == (1, 1)

    # Redis appears later on that port: the background retry finds it.
    with RedisServer(port=port):
        await wait_until_cached(cache)


async def test_redis_close_cancels_the_retry_task(make_redis: Callable[..., RedisCache]) -> None:
    cache = make_redis(f"redis://127.0.0.1:{free_port()}/0", retry_s=0.05)
    await cache.start()
    task = cache._retry_task
    assert task is not None and not task.done()
    async with asyncio.timeout(HANG_S):
        await cache.close()
    assert task.cancelled()
    assert await cache.get(unique_key()) is None  # closed: a miss, not an error
    await cache.close()  # twice is harmless


async def test_redis_server_helper_restarts_on_the_same_port() -> None:
    with RedisServer() as server:
        port = server.port
        with server.client() as raw:
            raw.set("k", "v")
        server.stop()
        assert not server.running
        server.start()
        assert server.port == port and server.running
        with server.client() as raw:
            assert raw.get("k") is None  # no persistence: a restart starts empty
            assert raw.ping()
