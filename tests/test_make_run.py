"""`make run` as a newcomer meets it: a fresh clone, no uv on PATH, no .venv.

The Makefile installs uv into ~/.local/bin with pip when it is missing, and that folder is
often not on PATH; every command the stack then runs must still find its programs. HOME is
a new folder, so make really installs uv; only the download caches (uv's, pip's) and pyenv's
root are shared with this machine, which keeps the sync to seconds. Ports are free loopback
ports passed as settings, as an operator would set them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

READY_LINE = "facescore is ready"


def _newcomer_path(home: Path) -> str:
    """This machine's PATH without uv, without ~/.local/bin and without any virtualenv."""
    kept = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder)
        if not folder or (path / "uv").exists() or (path / "activate").exists():
            continue
        if path == Path.home() / ".local" / "bin" or path == home / ".local" / "bin":
            continue
        kept.append(folder)
    return os.pathsep.join(kept)


def _uv_cache_dir() -> str:
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    return subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True).stdout


def _newcomer_env(home: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # `uv run` (which runs these tests) sets UV to its own path: a newcomer has none.
        if key != "UV"
        and not key.startswith(("UV_", "VIRTUAL_ENV", "PYTEST_", "DETECT_", "EMBED_", "SCORE_"))
        and not key.startswith("GATEWAY_")
    }
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    env.update(
        HOME=str(home),
        PATH=_newcomer_path(home),
        PYENV_ROOT=pyenv_root,
        UV_CACHE_DIR=_uv_cache_dir().strip(),
        PIP_CACHE_DIR=str(Path.home() / ".cache" / "pip"),
        DETECT_PORT=str(ports["detect"]),
        DETECT_METRICS_PORT=str(ports["detect_metrics"]),
        EMBED_PORT=str(ports["embed"]),
        EMBED_METRICS_PORT=str(ports["embed_metrics"]),
        SCORE_PORT=str(ports["score"]),
        SCORE_METRICS_PORT=str(ports["score_metrics"]),
        SCORE_DETECT_TARGET=f"dns:///127.0.0.1:{ports['detect']}",
        SCORE_EMBED_TARGET=f"dns:///127.0.0.1:{ports['embed']}",
        GATEWAY_PORT=str(ports["gateway"]),
        GATEWAY_SCORE_TARGET=f"dns:///127.0.0.1:{ports['score']}",
    )
    return env


def _session_members(session_id: int) -> list[str]:
    """Processes (pid and command) whose session is the one `make` led."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session_id:
            members.append(f"{stat.parent.name} {text[: text.rindex(')') + 1]}")
    return members


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "facescore"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    assert not (target / ".venv").exists()
    yield target


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)
    into.put("")


def _wait_for(lines: queue.Queue[str], text: str, log: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        log.append(line)
        if text in line:
            return
        assert line, f"make ended before {text!r}:\n" + "".join(log[-60:])


def test_make_run_from_a_fresh_clone_without_uv_on_path(
    clone: Path, tmp_path: Path, photo: object
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    names = ("detect", "embed", "score", "gateway")
    ports = {name: free_port() for name in names}
    ports.update({f"{name}_metrics": free_port() for name in names[:3]})
    env = _newcomer_env(home, ports)
    assert shutil.which("uv", path=env["PATH"]) is None

    make = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(make.stdout, lines), daemon=True).start()
    log: list[str] = []
    try:
        _wait_for(lines, READY_LINE, log, timeout=600)
        assert (home / ".local" / "bin" / "uv").exists(), "make did not install uv"

        base = f"http://127.0.0.1:{ports['gateway']}/api/v1"
        read = photo  # type: ignore[assignment]
        with httpx.Client(base_url=base, timeout=60) as api:
            assert api.post("/galleries", json={"name": "newcomer"}).status_code == 201
            enrolled = api.post(
                "/galleries/newcomer/subjects/yao/faces",
                files={"image": ("yaoming.jpg", read("yaoming.jpg"), "image/jpeg")},  # type: ignore[operator]
            )
            assert enrolled.status_code == 201, enrolled.text
            identified = api.post(
                "/galleries/newcomer/identify",
                files={"image": ("yaoming.jpg", read("yaoming.jpg"), "image/jpeg")},  # type: ignore[operator]
            )
            assert identified.status_code == 200, identified.text
            face = identified.json()["faces"][0]
            assert face["candidates"][0]["subject_id"] == "yao", json.dumps(face)
    finally:
        # Ctrl-C in the terminal: SIGINT to the whole foreground group.
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
            pytest.fail("make run did not stop on SIGINT:\n" + "".join(log[-60:]))

    # Every process of the stack is gone: nothing is left in make's session.
    leftover = _session_members(make.pid)
    assert not leftover, f"still running after SIGINT: {leftover}"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports['gateway']}/api/health", timeout=2)
