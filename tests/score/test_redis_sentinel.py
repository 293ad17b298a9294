"""The analysis cache through Redis Sentinel: real redis-server master, replica and Sentinel.

The cache finds the master by asking the Sentinel, and after a failover it writes to the
promoted replica without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
import redis
from pydantic import SecretStr, ValidationError

from facescore.devtools.redis_server import RedisSentinel, RedisServer
from services.score.cache import RedisCache, cache_key, make_cache
from services.score.redis_target import sentinel_addresses
from services.score.settings import ScoreSettings

PASSWORD = "s3cret/with:odd@chars"


def key() -> str:
    return cache_key("test-model", "p", hashlib.sha256(uuid.uuid4().bytes).hexdigest())


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def role(server: RedisServer) -> str | None:
    """The server's replication role; None while it refuses connections, as a demoted master
    does for a moment when it drops its clients to turn replica."""
    try:
        return str(server.client().info()["role"])
    except redis.ConnectionError:
        return None


@pytest.fixture
def cluster() -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel]]:
    """A master, a replica of it (both with a password) and one Sentinel watching them."""
    with RedisServer(PASSWORD) as master:
        replica_args = ["--replicaof", "127.0.0.1", str(master.port), "--masterauth", PASSWORD]
        with (
            RedisServer(PASSWORD, extra_args=replica_args) as replica,
            RedisSentinel(master) as sentinel,
        ):
            wait_for("the replica to sync and Sentinel to see it", sentinel.replicas_ready)
            yield master, replica, sentinel


def settings_for(sentinel: RedisSentinel, **extra: object) -> ScoreSettings:
    return ScoreSettings(
        redis_url=SecretStr(f"redis://:{quote(PASSWORD, safe='')}@{sentinel.name}/0"),
        redis_sentinels=f"{sentinel.address}",
        redis_retry_s=0.2,
        redis_timeout_s=5,  # a busy machine must not make a healthy Redis read as down
        **extra,  # type: ignore[arg-type]
    )


async def test_cache_follows_a_failover(
    cluster: tuple[RedisServer, RedisServer, RedisSentinel],
) -> None:
    master, replica, sentinel = cluster
    cache = make_cache(settings_for(sentinel))
    assert isinstance(cache, RedisCache)
    try:
        await cache.start()
        assert cache.up and "via sentinels" in cache.status()["target"]  # type: ignore[operator]
        assert PASSWORD not in str(cache.status())
        before = key()
        await cache.set(before, b"one")
        assert await cache.get(before) == b"one"
        assert master.client().get(before) == b"one"  # written to the master it was told of

        with sentinel.client() as client:
            client.execute_command("SENTINEL", "FAILOVER", sentinel.name)
        wait_for("Sentinel to promote the replica", lambda: sentinel.master_port() == replica.port)
        wait_for("the old master to turn replica", lambda: role(master) == "slave")

        # The cache's open connections point at the old master, now a read-only replica: the
        # first write fails over to a fresh lookup; the circuit breaker bounds the gap.
        after = key()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await cache.set(after, b"two")
            if replica.client().get(after) == b"two":
                break
            await asyncio.sleep(0.1)  # lets the circuit breaker's retry task run
        assert replica.client().get(after) == b"two"  # the promoted replica is the master now
        assert await cache.get(after) == b"two"
        assert cache.up
        # The blocking client of the admin commands (backup, restore) finds the new master too.
        target = settings_for(sentinel).redis_target()
        assert target is not None
        admin = key()
        with target.sync_client(socket_timeout=2) as client:
            client.set(admin, b"three")
        assert replica.client().get(admin) == b"three"
    finally:
        await cache.close()


def test_sentinel_settings_are_checked_at_startup() -> None:
    assert sentinel_addresses(" a:26379, [::1]:26380 ,") == [("a", 26379), ("::1", 26380)]
    for bad in ("a", "a:0", "a:70000", "a:26379,b"):
        with pytest.raises(ValueError, match="host:port"):
            sentinel_addresses(bad)
    with pytest.raises(ValidationError, match="SCORE_REDIS_SENTINELS"):
        ScoreSettings(redis_sentinels="a:26379,b")
    with pytest.raises(ValidationError, match="naming the master"):
        ScoreSettings(redis_sentinels="a:26379")  # no REDIS_URL to name the master
    target = ScoreSettings(
        redis_url=SecretStr("rediss://u:pw@mymaster/2"),
        redis_sentinels="s1:26379,s2:26379",
        redis_sentinel_password=SecretStr("sp"),
    ).redis_target()
    assert target is not None and target.master == "mymaster"
    assert target.describe() == "rediss://mymaster/2 via sentinels s1:26379,s2:26379"
    master, sentinel = target._split(
        {"host": "mymaster", "db": 2, "password": "pw", "connection_class": object},
        socket_timeout=0.25,
    )
    assert master == {"db": 2, "password": "pw", "socket_timeout": 0.25, "ssl": True}
    assert sentinel == {"socket_timeout": 0.25, "password": "sp", "ssl": True}
