"""Client channels between services: round-robin over every address, quick reconnects."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from services.common.logging import RequestIdClientInterceptor
from services.common.server import grpc_options


def _service_config(retry: Sequence[str], health_checked: bool) -> str:
    config: dict[str, object] = {
        # Every address the DNS name resolves to gets calls in turn: scaled-out replicas share load.
        "loadBalancingConfig": [{"round_robin": {}}],
    }
    if health_checked:
        # round_robin then calls only replicas whose grpc.health.v1 status is SERVING: one
        # still loading its model, or draining after SIGTERM, gets no calls. Its answers
        # would be UNAVAILABLE after the response headers, too late for the retry policy.
        config["healthCheckConfig"] = {"serviceName": ""}
    if retry:
        config["methodConfig"] = [
            {
                "name": [{"service": service} for service in retry],
                # UNAVAILABLE only: the call never reached the server's handler.
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def open_channel(
    target: str, max_message_bytes: int, *, retry: Sequence[str] = (), health_checked: bool = False
) -> grpc.aio.Channel:
    """A channel that carries the request id; calls to the services named in `retry`
    (full names, "facescore.v1.DetectService") are retried on UNAVAILABLE; a health_checked
    channel sends calls only to replicas that report SERVING."""
    options = [
        *grpc_options(max_message_bytes),
        ("grpc.service_config", _service_config(retry, health_checked)),
        ("grpc.enable_retries", 1),
        # A restarted dependency is found again within a second, not after minutes of backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # A dependency restarted at a new address (a container that lost its IP to another
        # while stopped) is looked up again after a second, not gRPC's default 30 s.
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
    ]
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=[RequestIdClientInterceptor()]
    )
