"""The README's examples, run as written against the real stack on loopback.

Only the addresses change: the README's fixed ports (8000, 50051-50053) become the test
stack's free ports. Its photo names get photos shipped by installed packages: ada.jpg and
photo.jpg are yaoming.jpg, team.jpg is players.jpg (22 faces, Yao Ming among them).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, ServiceProcess

Photo = Callable[[str], bytes]
README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def example(language: str, containing: str) -> str:
    found = [block for block in blocks(language) if containing in block]
    assert len(found) == 1, f"one README {language} block with {containing!r}, found {found}"
    return found[0]


@pytest.fixture
def photos(tmp_path: Path, photo: Photo, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, source in {"ada.jpg": "yaoming.jpg", "photo.jpg": "yaoming.jpg"}.items():
        (tmp_path / name).write_bytes(photo(source))
    (tmp_path / "team.jpg").write_bytes(photo("players.jpg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def drop_staff(gateway: ServiceProcess) -> None:
    """Both examples create the gallery "staff"; each starts without it."""
    status = httpx.delete(f"{gateway.url}/api/v1/galleries/staff", timeout=30).status_code
    assert status in (200, 404)


def test_curl_examples(photos: Path, gateway_service: ServiceProcess) -> None:
    drop_staff(gateway_service)
    script = example("sh", "curl -F image=@team.jpg").replace("\\\n", " ")
    commands = [line.strip() for line in script.splitlines() if line.startswith("curl")]
    assert len(commands) == 4
    answers = []
    for command in commands:
        args = shlex.split(command.replace("http://127.0.0.1:8000", gateway_service.url))
        done = subprocess.run(
            [*args, "--silent", "--show-error", "--fail-with-body"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        answers.append(json.loads(done.stdout))
    analyzed, gallery, enrolled, identified = answers
    assert len(analyzed["faces"]) == 22
    assert gallery["name"] == "staff"
    assert enrolled["created"] is True
    matched = [face for face in identified["faces"] if not face["unknown"]]
    assert [face["subject_id"] for face in matched] == ["ada"]
    assert len(identified["faces"]) == 22


def test_python_examples(
    photos: Path,
    capsys: pytest.CaptureFixture[str],
    gateway_service: ServiceProcess,
    score_for_gateway: ServiceProcess,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
) -> None:
    drop_staff(gateway_service)
    score_example = example("python", "ScoreServiceStub").replace(
        "127.0.0.1:50053", score_for_gateway.address
    )
    exec(compile(score_example, "README.md (score example)", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 22 and all(line.startswith("face at (") for line in lines)
    assert [line.split(": ", 1)[1].split(" [")[0] for line in lines].count("ada") == 1
    assert sum(": unknown [" in line for line in lines) == 21

    inference = (
        example("python", "DetectServiceStub")
        .replace("127.0.0.1:50051", detect_service.address)
        .replace("127.0.0.1:50052", embed_service.address)
    )
    names: dict[str, object] = {}
    exec(compile(inference, "README.md (inference example)", "exec"), names)
    faces, vectors = names["faces"], names["vectors"]
    assert len(faces) == 1 and len(vectors) == 1  # type: ignore[arg-type]
    assert len(vectors[0].values) == 512  # type: ignore[index]
    drop_staff(gateway_service)
