"""Health probes from the command line: one check for containers, a watch for `make run`."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

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


def healthcheck(address: str) -> int:
    """Exit code 0 when the service is SERVING, 1 otherwise."""
    status = asyncio.run(grpc_status(address))
    print(f"{address} {status}")
    return 0 if status == "SERVING" else 1


async def _watch(services: dict[str, str], interval: float) -> None:
    console = Console(stderr=False)
    last: dict[str, str] = {}
    started = time.monotonic()
    announced = False
    while True:
        statuses = dict(
            zip(services, await asyncio.gather(*map(grpc_status, services.values())), strict=True)
        )
        for name, status in statuses.items():
            if announced and status != last.get(name):
                console.print(f"{name} at {services[name]} is now {status}")
        last = statuses
        if not announced and all(s == "SERVING" for s in statuses.values()):
            announced = True
            console.print(f"[bold green]facescore is ready[/] in {time.monotonic() - started:.1f}s")
            for name, address in services.items():
                console.print(f"  {name:8} grpc://{address}")
        await asyncio.sleep(interval)


def watch(services: dict[str, str], interval: float = 2.0) -> int:
    """Wait until every service serves, print their addresses, then report changes."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(services, interval))
    return 0
