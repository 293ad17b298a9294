"""The score service's analysis cache: photo sha256 -> serialized faces and embeddings.

A hit spares a detect and an embed call, so the cache is an accelerator only: every failure
here reads as a miss, and a Redis that is down or slow must never stall or fail a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter, Gauge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from services.score.redis_target import RedisTarget
from services.score.settings import ScoreSettings

log = structlog.get_logger(__name__)

KEY_PREFIX = "facescore:analysis:v1:"

CACHE_REQUESTS = Counter(
    "facescore_cache_requests",
    "Analysis cache lookups, by result: hit, miss, error, or bypass (skipped: Redis is down).",
    ["result"],
)
CACHE_WRITES = Counter(
    "facescore_cache_writes",
    "Analysis cache writes, by result: ok, error, skipped (too large / off) or bypass.",
    ["result"],
)
CACHE_UP = Gauge("facescore_cache_up", "1 while the analysis cache is usable, else 0.")

# Failures that mean "this Redis is unreachable or not answering in time": they open the circuit.
# redis.exceptions.ResponseError is left out on purpose (see RedisCache._failed).
_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def cache_key(model_id: str, params: str, image_sha256: str) -> str:
    """Namespaced key: prefix + 16 hex of sha256(model identity, params) + the photo's sha256.

    The model and parameters are hashed together as a JSON list, so that no choice of
    separator inside either string can make two different pairs collide.
    """
    image_sha256 = image_sha256.lower()
    if not _SHA256_HEX.fullmatch(image_sha256):
        raise ValueError("image_sha256 must be 64 hex digits (hashlib.sha256(...).hexdigest())")
    setup = hashlib.sha256(json.dumps([model_id, params]).encode()).hexdigest()[:16]
    return f"{KEY_PREFIX}{setup}:{image_sha256}"


@runtime_checkable
class AnalysisCache(Protocol):
    kind: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, object]: ...


class MemoryCache:
    """In-process LRU bounded in bytes: the sum of len(key) + len(value) over the entries.

    Keys are ASCII (see cache_key), so len(key) is their size in bytes. Python's per-object
    overhead is not counted: the budget bounds the payload, which dominates for real entries.
    max_bytes=0 turns the cache off.
    """

    def __init__(
        self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.kind = "memory" if max_bytes > 0 else "off"
        self._clock = clock
        # key -> (value, expiry on self._clock); order = least recently used first.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        if self.max_bytes > 0:
            CACHE_UP.set(1)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        if self.max_bytes == 0:
            return None
        entry = self._entries.get(key)
        if entry is not None and entry[1] <= self._clock():
            self._drop(key)
            entry = None
        if entry is None:
            CACHE_REQUESTS.labels("miss").inc()
            return None
        self._entries.move_to_end(key)
        CACHE_REQUESTS.labels("hit").inc()
        return entry[0]

    async def set(self, key: str, value: bytes) -> None:
        if self.max_bytes == 0:
            return
        # Whatever happens below, the old value for this key must not outlive the new one.
        self._drop(key)
        size = len(key) + len(value)
        if size > self.max_bytes:
            # Storing it would evict everything else and still not fit.
            CACHE_WRITES.labels("skipped").inc()
            return
        while self._bytes + size > self.max_bytes:
            old_key, (old_value, _) = self._entries.popitem(last=False)
            self._bytes -= len(old_key) + len(old_value)
        self._entries[key] = (value, self._clock() + self.ttl_s)
        self._bytes += size
        CACHE_WRITES.labels("ok").inc()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(key) + len(entry[0])

    def status(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "up": self.max_bytes > 0,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
        }


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class RedisCache:
    """Redis-backed cache behind a circuit breaker.

    Closed (up): get/set talk to Redis, each call bounded by the short timeouts.
    Open (down): get/set return at once without touching the network; a background task
    PINGs every retry_s and closes the circuit on the first answer. The first connection
    failure opens it, so a dead Redis costs one failed call, not one stall per request.
    """

    kind = "redis"

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        ttl_s: int,
        timeout_s: float,
        retry_s: float,
        warn_every_s: float = 60.0,
    ) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        # While down, one warning per max(retry_s, warn_every_s): a day-long outage at the
        # default 5 s retry would otherwise write 17,000 identical lines.
        self.warn_every_s = max(retry_s, warn_every_s)
        if isinstance(target, str):
            target = RedisTarget(target)
        self.target = target.describe()
        # No I/O here; a malformed URL fails here, at startup, not on the first call.
        # redis-py retries a failed command with backoff by default, which would turn the one
        # call that discovers an outage into a multi-second stall: the breaker retries instead.
        self._client: aioredis.Redis = target.async_client(
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        # Socket timeouts bound each read and connect; this bounds a whole call, which may
        # connect, authenticate and then run the command.
        self._deadline_s = 3 * timeout_s
        self._up = False
        self._started = False
        self._closed = False
        # Bumped each time the circuit closes, so that a call that started before an outage
        # and fails after the recovery does not reopen the circuit.
        self._epoch = 0
        self._down_since: float | None = None
        self._last_error: str | None = None
        self._last_warning = 0.0
        self._retry_task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        """Probe Redis once (bounded by the short timeout); if down, the retry task takes over."""
        if self._started or self._closed:
            return
        self._started = True
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._client.ping()
        except Exception as error:  # any failure here just means "down"; never raise
            self._open(error, self._epoch)
        else:
            self._close_circuit()

    async def close(self) -> None:
        self._closed = True
        self._up = False
        CACHE_UP.set(0)
        task, self._retry_task = self._retry_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*_FAILURES):
            await self._client.aclose()

    async def get(self, key: str) -> bytes | None:
        if not self._up:
            CACHE_REQUESTS.labels("bypass").inc()
            return None
        epoch = self._epoch
        try:
            async with asyncio.timeout(self._deadline_s):
                value = await self._client.get(key)
        except _FAILURES as error:
            CACHE_REQUESTS.labels("error").inc()
            self._failed(error, epoch)
            return None
        if value is None:
            CACHE_REQUESTS.labels("miss").inc()
            return None
        CACHE_REQUESTS.labels("hit").inc()
        # str only comes back with decode_responses=True, which this client never sets.
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes) -> None:
        if not self._up:
            CACHE_WRITES.labels("bypass").inc()
            return
        epoch = self._epoch
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._client.set(key, value, ex=self.ttl_s)
        except _FAILURES as error:
            CACHE_WRITES.labels("error").inc()
            self._failed(error, epoch)
            return
        CACHE_WRITES.labels("ok").inc()

    def status(self) -> dict[str, object]:
        down_for = None if self._down_since is None else time.monotonic() - self._down_since
        return {
            "kind": self.kind,
            "up": self._up,
            "target": self.target,
            "down_for_s": None if down_for is None else round(down_for, 3),
            "last_error": self._last_error,
            "retry_s": self.retry_s,
        }

    def _failed(self, error: BaseException, epoch: int) -> None:
        if isinstance(error, ResponseError):
            # Redis answered, promptly, with an error about this one command (a key of the
            # wrong type, maxmemory reached on SET, a read-only replica): nothing stalls, so
            # the other calls keep their cache. Warned about at the same slow rate.
            self._last_error = _describe(error)
            now = time.monotonic()
            if now - self._last_warning >= self.warn_every_s:
                self._last_warning = now
                log.warning(
                    "redis cache command failed", target=self.target, error=_describe(error)
                )
            return
        self._open(error, epoch)

    def _open(self, error: BaseException, epoch: int) -> None:
        """Open the circuit (once: concurrent failures of one outage log one line)."""
        self._last_error = _describe(error)
        if self._closed or epoch != self._epoch or (self._down_since is not None):
            return
        self._up = False
        self._down_since = time.monotonic()
        self._last_warning = self._down_since
        CACHE_UP.set(0)
        log.warning(
            "redis cache down",
            target=self.target,
            error=self._last_error,
            retry_s=self.retry_s,
        )
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.create_task(self._retry(), name="redis-cache-retry")

    def _close_circuit(self) -> None:
        down_for = None if self._down_since is None else time.monotonic() - self._down_since
        self._epoch += 1
        self._up = True
        self._down_since = None
        self._last_error = None
        CACHE_UP.set(1)
        if down_for is None:
            log.info("redis cache up", target=self.target)
        else:
            log.info("redis cache up", target=self.target, down_for_s=round(down_for, 3))

    async def _retry(self) -> None:
        """While the circuit is open: PING every retry_s; the first answer closes it."""
        while not self._closed:
            await asyncio.sleep(self.retry_s)
            try:
                async with asyncio.timeout(self._deadline_s):
                    await self._client.ping()
            except Exception as error:  # the breaker relies on this task: it must outlive all
                self._last_error = _describe(error)
                now = time.monotonic()
                if now - self._last_warning >= self.warn_every_s:
                    self._last_warning = now
                    down_for = now - (self._down_since or now)
                    log.warning(
                        "redis cache still down",
                        target=self.target,
                        error=self._last_error,
                        down_for_s=round(down_for, 3),
                    )
                continue
            if not self._closed:
                self._close_circuit()
            return


def make_cache(settings: ScoreSettings) -> AnalysisCache:
    """Redis when SCORE_REDIS_URL is set, else the in-process cache (off at cache_max_bytes=0)."""
    target = settings.redis_target()
    if target is not None:
        return RedisCache(
            target,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.redis_timeout_s,
            retry_s=settings.redis_retry_s,
        )
    return MemoryCache(settings.cache_max_bytes, ttl_s=settings.cache_ttl_s)
