"""The shared gRPC bootstrap: health, reflection, request ids, providers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
import structlog
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.errors import reason_of
from services.common.logging import REQUEST_ID_HEADER, RequestIdClientInterceptor
from services.common.server import serve
from services.common.settings import ServerSettings
from tests.conftest import ServiceProcess, free_port, wait_until


class GatedService:
    """A service whose warm-up waits for the test, to watch health before and after it."""

    service_name = "facescore.test.Gated"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def register(self, server: grpc.aio.Server) -> None:
        """It offers no methods of its own."""

    async def start(self) -> None:
        await self.release.wait()

    async def stop(self) -> None:
        """Nothing to release."""

    def details(self) -> dict[str, Any]:
        return {}


class HeldService:
    """A service whose one method, Hold, answers only when the test releases it."""

    service_name = "facescore.test.Held"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    def register(self, server: grpc.aio.Server) -> None:
        async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.started.set()
            await self.release.wait()
            return b"done"

        handler = grpc.method_handlers_generic_handler(
            self.service_name, {"Hold": grpc.unary_unary_rpc_method_handler(hold)}
        )
        server.add_generic_rpc_handlers((handler,))

    async def start(self) -> None:
        """Nothing to load."""

    async def stop(self) -> None:
        """Nothing to release."""

    def details(self) -> dict[str, Any]:
        return {}


async def _wait_serving(address: str) -> None:
    for _ in range(100):
        try:
            if await _status(address) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{address} never turned SERVING")


async def _status(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=30
        )
    return int(reply.status)


async def _listening(address: str) -> None:
    """Wait until the server accepts connections (the timeout only catches a hang)."""
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)


async def _watch_until_serving(address: str, service: str = "") -> None:
    """Follow the health stream until it says SERVING (the deadline only catches a hang)."""
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=60
        )
        async for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return


async def test_health_turns_serving_only_after_warm_up() -> None:
    service = GatedService()
    settings = ServerSettings(port=free_port(), metrics_port=0, grace_period_s=1)
    address = f"127.0.0.1:{settings.port}"
    stopping = asyncio.Event()
    server = asyncio.create_task(serve(service, settings, stopping))
    try:
        await _listening(address)
        assert await _status(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (
            await _status(address, service.service_name)
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        service.release.set()
        await _watch_until_serving(address)
        assert (
            await _status(address, service.service_name) == health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        stopping.set()
        assert await asyncio.wait_for(server, 10) == 0


def test_reflection_lists_the_services(
    detect_service: ServiceProcess, embed_service: ServiceProcess
) -> None:
    for service, name in (
        (detect_service, "facescore.v1.DetectService"),
        (embed_service, "facescore.v1.EmbedService"),
    ):
        with grpc.insecure_channel(service.address) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {
            name,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services


def _log_lines(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for line in service.logs().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def _logged_done(service: ServiceProcess, request_id: str) -> bool:
    return any(
        line.get("request_id") == request_id and line.get("event") == "request done"
        for line in _log_lines(service)
    )


async def test_request_id_reaches_every_service_log(
    start_service: Callable[..., ServiceProcess], photo: Callable[[str], bytes]
) -> None:
    detect_service = start_service("detect", DETECT_LOG_LEVEL="debug")
    embed_service = start_service("embed", EMBED_LOG_LEVEL="debug")
    structlog.contextvars.bind_contextvars(request_id="rid-test-1234")
    try:
        interceptors = [RequestIdClientInterceptor()]
        async with (
            grpc.aio.insecure_channel(
                detect_service.address, interceptors=interceptors
            ) as detect_channel,
            grpc.aio.insecure_channel(
                embed_service.address, interceptors=interceptors
            ) as embed_channel,
        ):
            call = detect_pb2_grpc.DetectServiceStub(detect_channel).Detect(
                detect_pb2.DetectRequest(image=photo("yaoming.jpg"), include_crops=True)
            )
            faces = (await call).faces
            assert dict(await call.initial_metadata())[REQUEST_ID_HEADER] == "rid-test-1234"
            await embed_pb2_grpc.EmbedServiceStub(embed_channel).Embed(
                embed_pb2.EmbedRequest(crops=[faces[0].crop])
            )
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    for service in (detect_service, embed_service):
        # The access line is written after the reply is sent: wait for it, not a while.
        wait_until(f"{service.name}'s access line", partial(_logged_done, service, "rid-test-1234"))
        tagged = [line for line in _log_lines(service) if line.get("request_id") == "rid-test-1234"]
        assert tagged, service.logs()
        assert all(line["service"] == service.name for line in tagged)


def test_missing_gpu_provider_fails_startup_clearly(
    start_service: Callable[..., ServiceProcess],
) -> None:
    # No GPU here: asking for CUDA must stop the service, not fall back in silence.
    service = start_service("embed", wait=False, EMBED_PROVIDERS="cuda")
    assert service.process is not None
    assert service.process.wait(60) == 1
    assert "CUDAExecutionProvider requested but not usable" in service.logs()


def test_cpu_fallback_only_when_allowed(start_service: Callable[..., ServiceProcess]) -> None:
    service = start_service("embed", EMBED_PROVIDERS="cuda,cpu", EMBED_ALLOW_CPU_FALLBACK="true")
    with grpc.insecure_channel(service.address) as channel:
        info = embed_pb2_grpc.EmbedServiceStub(channel).GetModelInfo(
            common_pb2.GetModelInfoRequest(), timeout=5
        )
    assert list(info.providers) == ["CPUExecutionProvider"]
    assert "running on the CPU" in service.logs()


async def test_a_taken_port_fails_the_start() -> None:
    """gRPC's default SO_REUSEPORT would let a second server share the port in silence."""
    first, second = GatedService(), GatedService()
    first.release.set()
    settings = ServerSettings(port=free_port(), metrics_port=0, grace_period_s=1)
    stopping = asyncio.Event()
    running = asyncio.create_task(serve(first, settings, stopping))
    try:
        await _listening(f"127.0.0.1:{settings.port}")
        with structlog.testing.capture_logs() as logs:
            assert await asyncio.wait_for(serve(second, settings, asyncio.Event()), 10) == 1
        assert any(entry["event"].startswith("cannot bind") for entry in logs)
    finally:
        stopping.set()
        assert await asyncio.wait_for(running, 10) == 0


def test_check_ports_names_a_taken_port() -> None:
    ports = {
        name: str(free_port())
        for name in (
            "DETECT_PORT", "DETECT_METRICS_PORT", "EMBED_PORT", "EMBED_METRICS_PORT",
            "SCORE_PORT", "SCORE_METRICS_PORT", "GATEWAY_PORT",
        )
    }  # fmt: skip
    env = {**os.environ, **ports}
    command = [sys.executable, "-m", "facescore.cli", "check-ports"]
    free = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(ports["EMBED_PORT"])))
        holder.listen()
        taken = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert taken.returncode == 1
    assert f"already in use: 127.0.0.1:{ports['EMBED_PORT']} (embed)." in taken.stderr
    assert taken.stderr.count("error:") == 1


async def test_a_call_outlives_its_connections_age() -> None:
    """A connection closed for age lets a call in flight finish inside its deadline.

    The servers used to close connections 30 s old with 10 s grace, cutting calls that the
    gateway (30 s) and score (up to 60 s) still waited for. Scaled down here: the connection
    ages out after 0.2 s and the call runs on for a second after the client saw it go.
    """
    service = HeldService()
    settings = ServerSettings(
        port=free_port(), metrics_port=0, grace_period_s=1, max_connection_age_s=0.2, max_call_s=5
    )
    address = f"127.0.0.1:{settings.port}"
    stopping = asyncio.Event()
    server = asyncio.create_task(serve(service, settings, stopping))
    try:
        await _wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            hold = channel.unary_unary(f"/{service.service_name}/Hold")
            call = asyncio.ensure_future(hold(b"", timeout=10))
            await service.started.wait()
            # The server's GOAWAY turns the channel IDLE while the call is still in flight.
            state = channel.get_state()
            while state != grpc.ChannelConnectivity.IDLE:
                await channel.wait_for_state_change(state)
                state = channel.get_state()
            assert not call.done()
            await asyncio.sleep(1.0)  # five connection ages: the call is legitimately long
            service.release.set()
            assert await call == b"done"
    finally:
        stopping.set()
        assert await asyncio.wait_for(server, 10) == 0


async def test_no_call_runs_past_the_servers_limit() -> None:
    """Connection ageing counts on this bound: a longer client deadline is cut to max_call_s."""
    service = HeldService()
    settings = ServerSettings(port=free_port(), metrics_port=0, grace_period_s=1, max_call_s=0.3)
    address = f"127.0.0.1:{settings.port}"
    stopping = asyncio.Event()
    server = asyncio.create_task(serve(service, settings, stopping))
    try:
        await _wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            hold = channel.unary_unary(f"/{service.service_name}/Hold")
            try:
                await hold(b"", timeout=30)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert reason_of(error) == "deadline_exceeded"
            else:
                raise AssertionError("the held call was not ended")
    finally:
        stopping.set()
        assert await asyncio.wait_for(server, 10) == 0
