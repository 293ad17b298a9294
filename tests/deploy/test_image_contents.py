"""The CPU image's Python layer, rebuilt without Docker and run (fast, in `make test`).

The test copies what the Dockerfile's builder stage copies (read from its COPY lines),
installs it the way that stage does (`uv sync --locked --no-dev --extra cpu --extra score
--extra gateway`: every role, no dev dependencies), and starts the four services from that
environment alone, with the models mounted from public/models as compose does. A runtime
import of a dev-only package, a file the image leaves out (the web page, the model
manifest), or a second ONNX Runtime build fails here instead of in a container. Each role's
extra alone must import its services. The real images are built and run by
`make test-compose` (tests/deploy/compose); scripts/validate-deploy.sh lints the Dockerfile.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

ALL_ROLES = ["--extra", "cpu", "--extra", "score", "--extra", "gateway"]
STAGE = re.compile(r"^FROM\s+\S+\s+AS\s+(\S+)", re.IGNORECASE | re.MULTILINE)


def stage_copies(stage: str) -> list[str]:
    """Sources of the COPY lines (from the build context) of one Dockerfile stage."""
    text = (REPO / "Dockerfile").read_text()
    starts = [(m.group(1), m.start()) for m in STAGE.finditer(text)]
    bounds = dict(
        zip([n for n, _ in starts], [s for _, s in starts[1:]] + [len(text)], strict=True)
    )
    begin = dict(starts)[stage]
    sources = []
    for line in text[begin : bounds[stage]].splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def uv_binary() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not on PATH; run the tests through `make test`")
    return found


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = tmp_path_factory.mktemp("image") / "app"
    app.mkdir()
    for source in stage_copies("builder") + stage_copies("runtime-cpu"):
        target = app / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, target)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(app / ".venv")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [uv_binary(), "sync", "--locked", "--no-dev", "--quiet", *ALL_ROLES],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return app


def test_the_builder_copies_what_the_runtime_needs() -> None:
    copied = stage_copies("builder")
    assert {"pyproject.toml", "uv.lock", "facescore", "services", "gateway"} <= set(copied)
    assert "tests" not in copied and "benchmarks" not in copied
    assert "public/models/manifest.toml" in stage_copies("runtime-cpu")


def test_only_runtime_packages_and_one_build_of_each(image_root: Path) -> None:
    site = next((image_root / ".venv" / "lib").glob("python3*/site-packages"))
    names = {
        re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        for dist in importlib.metadata.distributions(path=[str(site)])
    }
    assert sorted(n for n in names if n.startswith("onnxruntime")) == ["onnxruntime"]
    assert sorted(n for n in names if n.startswith("opencv")) == ["opencv-python-headless"]
    assert not names & {"pytest", "ruff", "mypy", "grpcio-tools", "schemathesis", "playwright"}


@pytest.fixture(scope="module")
def image_stack(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """detect, embed, score and the gateway, each started from the image's environment."""
    bin_dir = image_root / ".venv" / "bin"
    ports = {name: free_port() for name in ("detect", "embed", "score", "gateway")}
    logs = tmp_path_factory.mktemp("image-logs")
    # What the image's ENV and compose set; nothing from this checkout but the models.
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(logs),
        "DETECT_MODEL_DIR": str(REPO / "public" / "models"),
        "EMBED_MODEL_DIR": str(REPO / "public" / "models"),
        "SCORE_DATA_DIR": str(logs / "data"),
        "SCORE_DETECT_TARGET": f"dns:///127.0.0.1:{ports['detect']}",
        "SCORE_EMBED_TARGET": f"dns:///127.0.0.1:{ports['embed']}",
        "GATEWAY_SCORE_TARGET": f"dns:///127.0.0.1:{ports['score']}",
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **{f"{name.upper()}_METRICS_PORT": "0" for name in ("detect", "embed", "score")},
    }
    processes = []
    for name in ports:
        log = (logs / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [str(bin_dir / "facescore"), "serve", name],
                cwd=logs,  # not the checkout: nothing may come from the working directory
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    url = f"http://127.0.0.1:{ports['gateway']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run(
                [str(bin_dir / "facescore"), "healthcheck", f"{url}/api/health"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if check.returncode == 0:
                break
            dead = [p.args[2] for p in processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                shown = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in logs.glob("*.log"))
                raise AssertionError(f"stack from the image did not serve ({dead}):\n{shown}")
            time.sleep(0.5)
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def test_the_stack_serves_from_the_image_environment(image_stack: str, photo: object) -> None:
    page = httpx.get(f"{image_stack}/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{image_stack}/api/docs", timeout=10).status_code == 200
    image = photo("t1.jpg")  # type: ignore[operator]
    analyzed = httpx.post(f"{image_stack}/api/v1/analyze", files={"image": image}, timeout=60)
    assert analyzed.status_code == 200, analyzed.text
    assert len(analyzed.json()["faces"]) == 6


# The role images (Dockerfile runtime-inference, -score, -gateway): each role's extra alone,
# then its services' modules imported from that environment and its forbidden packages absent.
ROLES = {
    "cpu": (["services.detect.server", "services.embed.server"], ("fastapi", "uvicorn")),
    "score": (["services.score.server"], ("onnxruntime", "opencv", "insightface", "fastapi")),
    "gateway": (["gateway.server"], ("onnxruntime", "opencv", "insightface", "onnx")),
}


@pytest.mark.parametrize("extra", sorted(ROLES))
def test_each_role_imports_from_its_own_extra(extra: str, image_root: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [uv_binary(), "sync", "--locked", "--no-dev", "--quiet", "--extra", extra],
        cwd=image_root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    names = {
        re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        for dist in importlib.metadata.distributions(path=[str(site)])
    }
    modules, forbidden = ROLES[extra]
    assert not [n for n in names if n.startswith(forbidden)], (extra, sorted(names))
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import " + ", ".join(modules)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    # The health check every container runs works in each role.
    probe = subprocess.run(
        [str(venv / "bin" / "facescore"), "healthcheck", "127.0.0.1:9"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert probe.returncode == 1 and "Traceback" not in probe.stderr, probe.stderr
