"""Health probes from the command line: one check for containers, a watch for `make run`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


async def grpc_status(address: str, timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name of the server at `address`, or UNREACHABLE."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def http_status(url: str, timeout: float = 2.0) -> str:
    """SERVING when `url` answers 200, else what went wrong."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            reply = await client.get(url)
    except httpx.HTTPError:
        return "UNREACHABLE"
    return "SERVING" if reply.status_code == 200 else f"HTTP {reply.status_code}"


async def status_of(target: str) -> str:
    return await (http_status(target) if target.startswith("http") else grpc_status(target))


def ports_in_use(wanted: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The (name, host, port) entries that cannot be bound now: another process holds them."""
    taken = []
    for name, host, port in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the servers do: a port left in TIME_WAIT by a stopped server is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host or "0.0.0.0", port))
            except OSError:
                taken.append((name, host, port))
    return taken


def healthcheck(address: str) -> int:
    """Exit code 0 when the service is SERVING, 1 otherwise."""
    status = asyncio.run(status_of(address))
    print(f"{address} {status}")
    return 0 if status == "SERVING" else 1


async def _watch(services: dict[str, str], interval: float, page_url: str | None) -> None:
    from rich.console import Console  # not at the top: the health checks do without it

    console = Console(stderr=False)
    last: dict[str, str] = {}
    started = time.monotonic()
    announced = False
    while True:
        statuses = dict(
            zip(services, await asyncio.gather(*map(status_of, services.values())), strict=True)
        )
        for name, status in statuses.items():
            if announced and status != last.get(name):
                console.print(f"{name} at {services[name]} is now {status}")
        last = statuses
        if not announced and all(s == "SERVING" for s in statuses.values()):
            announced = True
            console.print(f"[bold green]facescore is ready[/] in {time.monotonic() - started:.1f}s")
            for name, address in services.items():
                shown = address if address.startswith("http") else f"grpc://{address}"
                console.print(f"  {name:8} {shown}")
            if page_url:
                console.print(f"\n  Open [bold]{page_url}[/] in a browser.")
        await asyncio.sleep(interval)


def watch(services: dict[str, str], page_url: str | None = None, interval: float = 2.0) -> int:
    """Wait until every service serves, print their addresses, then report changes."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(services, interval, page_url))
    return 0
