"""Fixtures shared by the tests: real services started as processes on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.common.models import insightface_image, vectron_file

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll until check() holds. The timeout only catches a hang: it decides no outcome."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting after {timeout}s for {what}")
        time.sleep(0.05)


@dataclass
class ServiceProcess:
    """One facescore service running as its own process, as it does in production."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> None:
        prefix = self.name.upper()
        env = {
            **os.environ,
            f"{prefix}_PORT": str(self.port),
            f"{prefix}_METRICS_PORT": str(self.metrics_port),
            **self.env,
        }
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "facescore.cli", "serve", self.name],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        """Base URL of an HTTP service (the gateway)."""
        return f"http://127.0.0.1:{self.port}"

    def health(self, timeout: float = 1.0) -> int:
        if self.name == "gateway":
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=timeout) as reply:
                    ok = reply.status == 200
            except OSError:
                ok = False
            return health_pb2.HealthCheckResponse.SERVING if ok else -1
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout).status)
            except grpc.RpcError:
                return -1

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.logs()}")
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not SERVING after {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the log holds text (lines reach the file when the service writes them)."""
        wait_until(f"{text!r} in the {self.name} log", lambda: text in self.logs(), timeout)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include these, from /metrics."""
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


@pytest.fixture(scope="session")
def start_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory: start a service with extra env; every one is stopped at session end."""
    started: list[ServiceProcess] = []

    def start(name: str, wait: bool = True, **env: str) -> ServiceProcess:
        log_dir = tmp_path_factory.mktemp(f"{name}-logs")
        service = ServiceProcess(name, env, log_dir / f"{name}.log")
        service.start()
        started.append(service)
        if wait:
            service.wait_serving()
        return service

    yield start
    for service in started:
        if service.process is not None and service.process.poll() is None:
            service.stop()


@pytest.fixture(scope="session")
def detect_service(start_service) -> ServiceProcess:  # type: ignore[no-untyped-def]
    return start_service("detect")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def embed_service(start_service) -> ServiceProcess:  # type: ignore[no-untyped-def]
    return start_service("embed")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def photo() -> object:
    """Bytes of a sample photo shipped by an installed package (t1, players, yaoming, gdp)."""

    def read(name: str) -> bytes:
        if name == "t1.jpg":
            return insightface_image(name).read_bytes()
        return vectron_file(name).read_bytes()

    return read


@pytest.fixture(scope="session")
def score_for_gateway(
    start_service,  # type: ignore[no-untyped-def]
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServiceProcess:
    """A score service of its own (embedded Qdrant, in-process cache) behind the gateway."""
    return start_service(  # type: ignore[no-any-return]
        "score",
        SCORE_DETECT_TARGET=f"dns:///{detect_service.address}",
        SCORE_EMBED_TARGET=f"dns:///{embed_service.address}",
        SCORE_DATA_DIR=str(tmp_path_factory.mktemp("gateway-score-data")),
    )


@pytest.fixture(scope="session")
def gateway_service(start_service, score_for_gateway: ServiceProcess) -> ServiceProcess:  # type: ignore[no-untyped-def]
    """The whole stack: detect, embed, score and the REST gateway, auth off."""
    return start_service(  # type: ignore[no-any-return]
        "gateway", GATEWAY_SCORE_TARGET=f"dns:///{score_for_gateway.address}"
    )
