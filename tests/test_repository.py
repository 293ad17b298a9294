"""Repository invariants: generated stubs, one OpenCV and one ONNX Runtime, documented settings."""

from __future__ import annotations

import filecmp
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from facescore.settings_doc import SERVICES, env_example

REPO = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *[f"protos/{p}" for p in protos],
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert fresh, "protoc produced nothing"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, REPO / p, shallow=False)]
    assert not stale, f"stubs are stale, run `make proto`: {stale}"


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_exactly_one_opencv_build() -> None:
    assert _installed("opencv-python-headless")
    for other in ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"):
        assert not _installed(other), f"{other} is installed beside opencv-python-headless"


def test_exactly_one_onnxruntime_build() -> None:
    builds = [
        b for b in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino") if _installed(b)
    ]
    assert len(builds) == 1, f"ONNX Runtime builds installed: {builds}"


def test_env_example_lists_every_setting() -> None:
    # Regenerate with `uv run facescore settings > .env.example`.
    documented = (REPO / ".env.example").read_text()
    assert documented == env_example(), "stale: run `uv run facescore settings > .env.example`"
    for _, settings in SERVICES:
        prefix = settings.model_config["env_prefix"]
        assert all(f"# {prefix}{name.upper()}=" in documented for name in settings.model_fields)
