"""gRPC server bootstrap shared by every service.

Health (NOT_SERVING until the service has loaded and warmed up its models), reflection,
Prometheus metrics and /health details on a side port, request ids in every log line,
stable error reasons, explicit message sizes, and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.errors import FaceScoreError, Reason
from services.common.logging import REQUEST_ID_HEADER, request_id_from
from services.common.memory import retain_freed_memory
from services.common.metrics import GRPC_LATENCY, GRPC_REQUESTS, start_side_port
from services.common.settings import ServerSettings

log = structlog.get_logger(__name__)
# Probes that orchestrators and `facescore watch` send every few seconds: logged at debug
# level while they succeed, so that they do not bury the calls that matter.
QUIET_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/facescore.v1.ScoreService/GetHealth",
    }
)


class Service(Protocol):
    """What a facescore service hands to `serve`."""

    #: Fully qualified gRPC service name, for health and reflection.
    service_name: str

    def register(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None:
        """Load and warm up the models; health turns SERVING when this returns."""

    async def stop(self) -> None: ...

    def details(self) -> dict[str, Any]:
        """Health details: model identity, providers, settings worth showing."""


@dataclass(frozen=True)
class _Undecodable:
    """A request whose bytes are not the method's message (corrupt, or strings not UTF-8)."""

    error: str


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request id, access log, metrics and error reasons for every unary call.

    `on_model_failed` hears of a model that failed for good (reason ``model_failed``) before
    the caller does, so that health already says NOT_SERVING when the error arrives. No call
    runs longer than `max_call_s`, whatever deadline its client sent: connection ageing
    counts on that bound.
    """

    def __init__(
        self,
        max_call_s: float,
        on_model_failed: Callable[[FaceScoreError], Awaitable[None]] | None = None,
    ) -> None:
        self.max_call_s = max_call_s
        self._on_model_failed = on_model_failed

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer

        def tolerant_deserializer(data: bytes) -> Any:
            # grpc answers a message that does not parse with UNKNOWN and no reason: keep the
            # error and let `wrapped` refuse it as the client's mistake it is.
            try:
                return deserialize(data) if deserialize is not None else data
            except DecodeError as error:
                return _Undecodable(str(error))

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = request_id_from(context.invocation_metadata())
            structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
            await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
            started = time.perf_counter()
            code, reason = "OK", ""
            try:
                if isinstance(request, _Undecodable):
                    raise FaceScoreError(
                        Reason.INVALID_ARGUMENT,
                        f"the request is not a valid message: {request.error}",
                        metadata={"field": "request"},
                    )
                try:
                    async with asyncio.timeout(self.max_call_s):
                        return await behavior(request, context)
                except TimeoutError:
                    raise FaceScoreError(
                        Reason.DEADLINE_EXCEEDED,
                        f"the call ran longer than this server's limit of {self.max_call_s} s",
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ) from None
            except FaceScoreError as error:
                code, reason = error.code.name, str(error.reason)
                if error.reason == Reason.MODEL_FAILED and self._on_model_failed is not None:
                    await self._on_model_failed(error)
                log.info("request rejected", code=code, reason=reason, detail=error.message)
                await context.abort_with_status(error.to_status())
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as error:
                if isinstance(error, grpc.aio.AbortError):
                    code = context.code().name if context.code() else "UNKNOWN"
                    raise
                code, reason = "INTERNAL", str(Reason.INTERNAL)
                log.exception("request failed")
                await context.abort_with_status(
                    FaceScoreError(
                        Reason.INTERNAL, "internal error", grpc.StatusCode.INTERNAL
                    ).to_status()
                )
            finally:
                elapsed = time.perf_counter() - started
                GRPC_LATENCY.labels(method).observe(elapsed)
                GRPC_REQUESTS.labels(method, code, reason).inc()
                quiet = method in QUIET_METHODS and code == "OK"
                (log.debug if quiet else log.info)(
                    "request done", code=code, ms=round(elapsed * 1000, 2)
                )
                structlog.contextvars.unbind_contextvars("request_id", "method")

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=tolerant_deserializer,
            response_serializer=handler.response_serializer,
        )


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


# gRPC binds with SO_REUSEPORT by default: a second server on a taken port would start and
# silently share its traffic with the first. Off, a taken port fails the start.
SERVER_BIND_OPTIONS = [("grpc.so_reuseport", 0)]


def connection_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Connection ageing that never cuts a call inside its deadline.

    Clients re-resolve DNS only when a connection closes: closing each connection after a
    while lets round_robin clients find replicas added since (scale-out, autoscaling). A call
    that starts just before the close may run for `max_call_s` (the interceptor ends it
    then), so the grace after the close is that long plus a second for the reply to travel.
    """
    return [
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", round((settings.max_call_s + 1) * 1000)),
    ]


async def serve(
    service: Service, settings: ServerSettings, stopping: asyncio.Event | None = None
) -> int:
    """Run `service` until SIGTERM, SIGINT or `stopping`; returns the process exit code."""
    retain_freed_memory()
    ready = False
    failure: str | None = None
    health = HealthServicer()

    async def model_failed(error: FaceScoreError) -> None:
        # The accelerator failed mid-run and ONNX Runtime may not fall back to the CPU: stop
        # taking traffic so that the orchestrator restarts the process or routes around it.
        nonlocal ready, failure
        if failure is not None:
            return
        ready, failure = False, error.message
        log.error("model failed: health is NOT_SERVING until a restart", failure=failure)
        for name in ("", service.service_name):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    server = grpc.aio.server(
        interceptors=[ObservabilityInterceptor(settings.max_call_s, model_failed)],
        options=grpc_options(settings.max_message_bytes)
        + connection_options(settings)
        + SERVER_BIND_OPTIONS,
    )
    service.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", service.service_name):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            service.service_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older releases returned 0
        bound = 0
    if bound == 0:
        log.error(
            "cannot bind: the port is in use (is this service already running?) or the "
            "address is not one of this machine's",
            address=address,
        )
        return 1
    await server.start()

    def health_details() -> tuple[bool, dict[str, Any]]:
        details = {"status": "SERVING" if ready else "NOT_SERVING", **service.details()}
        if failure is not None:
            details["failure"] = failure
        return ready, details

    side = (
        start_side_port(settings.host, settings.metrics_port, health_details)
        if settings.metrics_port
        else None
    )
    log.info("listening", address=address, metrics_port=settings.metrics_port)

    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    starting = asyncio.create_task(service.start())
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if starting.done():
        if (error := starting.exception()) is not None:
            log.error("startup failed", error=str(error), reason=getattr(error, "reason", None))
            exit_code = 1
            stopping.set()
        elif failure is None:
            ready = True
            for name in ("", service.service_name):
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", **service.details())
    await stop_wait
    starting.cancel()

    log.info("shutting down", grace_period_s=settings.grace_period_s)
    ready = False
    await health.enter_graceful_shutdown()
    await server.stop(settings.grace_period_s)
    await service.stop()
    if side is not None:
        side.shutdown()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped", exit_code=exit_code)
    return exit_code
