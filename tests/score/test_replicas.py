"""Replicas of detect and embed behind one score target, under identify load.

score reaches detect and embed through gRPC's ``ipv4:`` target listing every replica's
address, the static form of what Compose and Kubernetes DNS give it (docs/scaling.md), with
round_robin and retries on UNAVAILABLE (services/common/channels.py). Real processes
throughout: a replica is killed with SIGKILL, as a crashed or evicted one dies, and started
again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.errors import reason_of
from tests.conftest import ServiceProcess, wait_until

StartService = Callable[..., ServiceProcess]

CLIENTS = 4  # Concurrent identify callers.
AFTER_KILL = 20  # Identify calls that must succeed after the kill, before the restart.


def ipv4_target(replicas: list[ServiceProcess]) -> str:
    return "ipv4:" + ",".join(replica.address for replica in replicas)


def calls(replica: ServiceProcess, method: str) -> float:
    """Calls of a method the replica has answered (its own metrics: a fresh process starts at 0)."""
    service = f"facescore.v1.{replica.name.capitalize()}Service"
    return replica.metric("facescore_grpc_requests_total", method=f"/{service}/{method}")


@dataclass
class Load:
    """Identify calls from several clients until stopped; outcomes counted."""

    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, address: str, gallery: str, image: bytes) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = score_pb2_grpc.ScoreServiceStub(channel)
            request = score_pb2.IdentifyRequest(gallery=gallery, image=image)
            while not self.stop.is_set():
                try:
                    reply = await stub.Identify(request, timeout=60)
                except grpc.aio.AioRpcError as error:
                    self.failures[f"{error.code().name} {reason_of(error)}"] += 1
                else:
                    assert [f.subject_id for f in reply.faces] == ["yao"]
                    self.ok += 1

    async def rest_client(self, url: str, gallery: str, image: bytes) -> None:
        """A REST caller that honours Retry-After, as a well-behaved client does."""
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not self.stop.is_set():
                reply = await http.post(
                    f"/api/v1/galleries/{gallery}/identify",
                    files={"image": ("photo.jpg", image, "image/jpeg")},
                )
                if reply.status_code == 200:
                    assert [f["subject_id"] for f in reply.json()["faces"]] == ["yao"]
                    self.ok += 1
                    continue
                retry_after = reply.headers.get("retry-after", "")
                code = reply.json().get("code")
                self.failures[f"{reply.status_code} {code} retry-after {retry_after}"] += 1
                if retry_after.isdigit():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), int(retry_after))

    async def reach(self, ok: int) -> None:
        """Wait until `ok` calls have succeeded (the timeout only catches a hang)."""
        async with asyncio.timeout(120):
            while self.ok < ok:
                await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def spare_replicas(start_service: StartService) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """A detect and an embed of the module's own, which its tests kill and start again."""
    detect, embed = start_service("detect", wait=False), start_service("embed", wait=False)
    detect.wait_serving()
    embed.wait_serving()
    yield detect, embed


def start_score(
    start_service: StartService,
    detect: list[ServiceProcess],
    embed: list[ServiceProcess],
    data_dir: Path,
) -> ServiceProcess:
    return start_service(
        "score",
        SCORE_DETECT_TARGET=ipv4_target(detect),
        SCORE_EMBED_TARGET=ipv4_target(embed),
        SCORE_DATA_DIR=str(data_dir),
        # No cache: every identify goes through detect and embed.
        SCORE_CACHE_MAX_BYTES="0",
    )


def enroll_yao(score: ServiceProcess, photo: Callable[[str], bytes]) -> None:
    with grpc.insecure_channel(score.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        stub.CreateGallery(score_pb2.CreateGalleryRequest(name="team"), timeout=30)
        stub.Enroll(
            score_pb2.EnrollRequest(gallery="team", subject_id="yao", image=photo("yaoming.jpg")),
            timeout=60,
        )


def kill(*replicas: ServiceProcess) -> None:
    for replica in replicas:
        assert replica.process is not None
        replica.process.kill()
    for replica in replicas:
        assert replica.process is not None
        replica.process.wait(30)


def restart(*replicas: ServiceProcess) -> None:
    """Start killed replicas again on their ports."""
    for replica in replicas:
        replica.stop()  # closes the log of the killed process
        replica.start()
    for replica in replicas:
        replica.wait_serving()


async def test_killing_a_replica_of_each_fails_no_request(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    spare_replicas: tuple[ServiceProcess, ServiceProcess],
    photo: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    spare_detect, spare_embed = spare_replicas
    score = start_score(
        start_service, [detect_service, spare_detect], [embed_service, spare_embed], tmp_path
    )
    enroll_yao(score, photo)
    load = Load()
    clients = [
        asyncio.create_task(load.client(score.address, "team", photo("yaoming.jpg")))
        for _ in range(CLIENTS)
    ]
    try:
        # round_robin: the spares take their share before anything is killed.
        await asyncio.to_thread(
            wait_until,
            "calls on every replica",
            lambda: calls(spare_detect, "Detect") > 0 and calls(spare_embed, "Embed") > 0,
        )
        await load.reach(load.ok + 5)
        kill(spare_detect, spare_embed)
        killed_at, ok_at_kill = time.monotonic(), load.ok
        await load.reach(ok_at_kill + AFTER_KILL)

        await asyncio.to_thread(restart, spare_detect, spare_embed)
        serving_at = time.monotonic()
        await asyncio.to_thread(
            wait_until,
            "calls on the restarted replicas",
            lambda: calls(spare_detect, "Detect") > 0 and calls(spare_embed, "Embed") > 0,
        )
        picked_up_s = time.monotonic() - serving_at
        await load.reach(load.ok + 5)
    finally:
        load.stop.set()
        await asyncio.gather(*clients)
    print(
        f"\nreplicas 2+2: {load.ok} identify calls, {sum(load.failures.values())} failed; "
        f"{ok_at_kill} before the kill, restart {serving_at - killed_at:.1f} s after it, "
        f"restarted replicas called {picked_up_s:.2f} s after SERVING"
    )
    assert not load.failures, load.failures


async def test_without_replicas_callers_get_503_with_retry_after(
    start_service: StartService,
    spare_replicas: tuple[ServiceProcess, ServiceProcess],
    photo: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    """What a user sees when the only detect and embed die: the same kill, one replica each."""
    detect, embed = spare_replicas
    score = start_score(start_service, [detect], [embed], tmp_path)
    gateway = start_service(
        "gateway", GATEWAY_SCORE_TARGET=f"dns:///{score.address}", GATEWAY_RETRY_AFTER_S="1"
    )
    enroll_yao(score, photo)
    load = Load()
    clients = [
        asyncio.create_task(load.rest_client(gateway.url, "team", photo("yaoming.jpg")))
        for _ in range(CLIENTS)
    ]
    try:
        await load.reach(5)
        kill(detect, embed)
        killed_at, ok_at_kill = time.monotonic(), load.ok
        async with asyncio.timeout(120):
            while not load.failures:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(restart, detect, embed)
        serving_at = time.monotonic()
        ok_at_restart = load.ok
        await load.reach(ok_at_restart + 1)
        picked_up_s = time.monotonic() - serving_at
        await load.reach(load.ok + 5)
    finally:
        load.stop.set()
        await asyncio.gather(*clients)
    failed = sum(load.failures.values())
    print(
        f"\nreplicas 1+1: {load.ok + failed} identify calls through the gateway, {failed} "
        f"failed ({dict(load.failures)}); restart {serving_at - killed_at:.1f} s after the kill, "
        f"first answer {picked_up_s:.2f} s after SERVING"
    )
    # Every failure is the documented one: 503, dependency_unavailable, Retry-After.
    assert set(load.failures) == {"503 dependency_unavailable retry-after 1"}, load.failures
    # Between the kill and the restart only calls already past detect and embed got answers.
    assert ok_at_restart - ok_at_kill <= CLIENTS
