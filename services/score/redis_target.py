"""Where the analysis cache lives: one Redis (SCORE_REDIS_URL) or a master found through Sentinel.

With SCORE_REDIS_SENTINELS set, the client asks those Sentinels for the current master of
the service named by SCORE_REDIS_URL's host, and asks again after a failover: the URL keeps
its other parts (credentials, database, rediss:// for TLS, query options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
import redis.asyncio.sentinel as aiosentinel
import redis.connection
import redis.sentinel

_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]]+):(?P<port>[0-9]{1,5})")


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """ "host:port,host:port" -> [(host, port), ...]; ValueError names the bad entry."""
    addresses = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        match = _ADDRESS.fullmatch(entry)
        port = int(match["port"]) if match else 0
        if match is None or not 0 < port < 65536:
            raise ValueError(f"{entry!r} is not host:port (SCORE_REDIS_SENTINELS)")
        addresses.append((match["host"].strip("[]"), port))
    return addresses


def redacted(url: str) -> str:
    """scheme://host:port/db of a URL, without credentials or options, for logs and health."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


@dataclass(frozen=True)
class RedisTarget:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_password: str | None = None

    @property
    def master(self) -> str:
        """With Sentinels: the master's service name (the URL's host)."""
        return urlsplit(self.url).hostname or ""

    def describe(self) -> str:
        if not self.sentinels:
            return redacted(self.url)
        where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{redacted(self.url)} via sentinels {where}"

    def _split(
        self, parsed: dict[str, Any], **options: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(master connection kwargs, Sentinel connection kwargs) from the parsed URL."""
        if not self.master:
            raise ValueError(
                "with SCORE_REDIS_SENTINELS set, SCORE_REDIS_URL's host must name the master "
                "(redis://:PASSWORD@mymaster/0)"
            )
        parsed.pop("host", None)
        parsed.pop("port", None)
        tls = parsed.pop("connection_class", None) is not None  # only rediss:// sets one
        master = {**parsed, **options, "ssl": tls}
        sentinel = {k: v for k, v in options.items() if k.startswith("socket_")}
        sentinel.update(password=self.sentinel_password, ssl=tls)
        return master, sentinel

    def async_client(self, **options: Any) -> aioredis.Redis:
        """An asyncio client; `options` (timeouts, retry) apply to every connection."""
        if not self.sentinels:
            return aioredis.Redis.from_url(self.url, **options)
        parsed: dict[str, Any] = dict(aioconnection.parse_url(self.url))
        master, sentinel = self._split(parsed, **options)
        manager = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels), sentinel_kwargs=sentinel
        )
        client: aioredis.Redis = manager.master_for(self.master, **master)
        return client

    def sync_client(self, **options: Any) -> redis.Redis:
        """A blocking client, for the admin commands (backup, restore)."""
        if not self.sentinels:
            return redis.Redis.from_url(self.url, **options)
        parsed = redis.connection.parse_url(self.url)  # type: ignore[no-untyped-call]
        master, sentinel = self._split(parsed, **options)
        manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels), sentinel_kwargs=sentinel
        )
        client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
            self.master, **master
        )
        return client
