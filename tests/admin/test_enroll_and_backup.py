"""`facescore enroll`, `admin backup` and `admin restore` against a real local stack: detect,
embed and score processes, score with embedded Qdrant under a temporary SCORE_DATA_DIR."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from facescore.admin.backup import sha256_file
from facescore.admin.enroll import collect
from facescore.cli import main
from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.models import select_model, vectron_file
from services.common.settings import DEFAULT_MODEL_DIR
from tests.admin.helpers import (
    GOOD_PHOTOS,
    GOOD_SUBJECTS,
    SKIPPED,
    build_good_photos,
    build_photo_folder,
    counts,
    face_counts,
    facescore,
    gallery_state,
    score_env,
)
from tests.conftest import ServiceProcess, free_port

StartService = Callable[..., ServiceProcess]


def tree(path: Path) -> dict[str, str]:
    """Every file under path with its sha256: to show that nothing was touched."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_collect_skips_hidden_entries_and_non_files(tmp_path: Path) -> None:
    photos, skipped = collect(build_photo_folder(tmp_path / "photos"))
    labels = [p.label for p in photos]
    assert labels == sorted(labels)
    assert not any("/." in label or label.startswith(".") for label in labels)
    assert {p.subject for p in photos} == {*GOOD_SUBJECTS, "group", "nobody", "broken"}
    assert len(photos) == GOOD_PHOTOS + 4
    assert skipped == SKIPPED


def test_enroll_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enroll", str(tmp_path / "missing"), "--gallery", "g"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    assert main(["enroll", str(tmp_path / "empty"), "--gallery", "g"]) == 2
    assert "no photos under" in capsys.readouterr().err
    build_good_photos(tmp_path / "photos")
    assert main(["enroll", str(tmp_path / "photos"), "--gallery", "g", "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["enroll", str(tmp_path / "photos")])  # --gallery is required
    assert raised.value.code == 2


def test_enroll_says_when_score_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_good_photos(tmp_path / "photos")
    target = f"127.0.0.1:{free_port()}"
    args = ["--gallery", "g", "--target", target, "--retries", "1", "--timeout", "2"]
    assert main(["enroll", str(tmp_path / "photos"), *args]) == 1
    assert f"cannot reach the score service at {target}" in capsys.readouterr().err


def test_enroll_backup_restore_round_trip(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    photos = build_photo_folder(tmp_path / "photos")
    data = tmp_path / "data"
    score = start_service("score", **score_env(detect_service, embed_service, data))

    # Without --create-gallery a missing gallery stops the run before any photo is sent.
    missing = facescore("enroll", photos, "--gallery", "people", "--target", score.address)
    assert missing.returncode == 1
    assert "gallery 'people' does not exist" in missing.stderr
    assert "--create-gallery" in missing.stderr

    first = facescore(
        "enroll", photos, "--gallery", "people", "--target", score.address, "--create-gallery"
    )
    assert first.returncode == 1, first.stderr  # some photos fail, by design
    assert counts(first.stdout) == {"enrolled": GOOD_PHOTOS, "already there": 0, "failed": 4}
    out = first.stdout
    assert "multiple_faces (2):" in out
    assert "group/gdp.jpg: the photo holds 5 faces" in out
    assert "group/t1.jpg: the photo holds 6 faces" in out
    assert "no_face (1):\n    nobody/wall.jpg: no face found" in out
    assert "corrupt_image (1):\n    broken/yaoming.jpg" in out
    assert f"skipped        {SKIPPED} (hidden" in out
    assert "run again" in out
    state = gallery_state(score)
    faces, subjects = state["people"]
    assert faces == GOOD_PHOTOS and face_counts(subjects) == GOOD_SUBJECTS
    assert all(len(ids) == n for n, ids in subjects.values())

    # A second run enrolls nothing new: every good photo is already there.
    second = facescore(
        "enroll", photos, "--gallery", "people", "--target", score.address, "--concurrency", "8"
    )
    assert second.returncode == 1
    assert counts(second.stdout) == {"enrolled": 0, "already there": GOOD_PHOTOS, "failed": 4}
    assert gallery_state(score) == state

    # Only good photos: exit status 0.
    good = facescore(
        "enroll", build_good_photos(tmp_path / "good"), "--gallery", "people",
        "--target", score.address,
    )  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    assert counts(good.stdout) == {"enrolled": 0, "already there": GOOD_PHOTOS, "failed": 0}
    assert "failures by reason" not in good.stdout

    # --face-selection largest takes a face of each group photo.
    shutil.copytree(photos / "group", tmp_path / "groups" / "team")
    largest = facescore(
        "enroll", tmp_path / "groups", "--gallery", "groups", "--target", score.address,
        "--create-gallery", "--face-selection", "largest",
    )  # fmt: skip
    assert largest.returncode == 0, largest.stdout + largest.stderr
    assert counts(largest.stdout) == {"enrolled": 2, "already there": 0, "failed": 0}
    state = gallery_state(score)
    assert face_counts(state["groups"][1]) == {"team": 2}

    # A running score service owns the embedded shards: the backup asks it for a snapshot.
    live = tmp_path / "live"
    done = facescore("admin", "backup", live, "--score", score.address, SCORE_DATA_DIR=str(data))
    assert done.returncode == 0, done.stderr
    assert "snapshot taken by the running score service" in done.stdout
    counted = json.loads((live / "manifest.json").read_text())["live"]
    assert (counted["faces"], counted["subjects"], counted["galleries"]) == (9, 5, 2)
    assert list((data / "snapshots").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert score.stop() == 0
    backup = tmp_path / "backup"
    done = facescore("admin", "backup", backup, SCORE_DATA_DIR=str(data))
    assert done.returncode == 0, done.stderr
    assert f"backup written to {backup}" in done.stdout
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["mode"] == "embedded" and manifest["format"] == 1
    assert manifest["facescore_version"] and manifest["created"]
    assert manifest["redis"] is None
    assert [m["model_name"] for m in manifest["models"]] == ["w600k_mbf"]
    recognizer = select_model(DEFAULT_MODEL_DIR, "recognizer")
    assert manifest["models"][0]["model_sha256"] == recognizer.sha256
    assert sum(n.endswith("/collection.json") for n in manifest["files"]) == 2
    for name, entry in manifest["files"].items():
        assert sha256_file(backup / name) == entry["sha256"]
    assert facescore("admin", "backup", backup, SCORE_DATA_DIR=str(data)).returncode == 1
    # The live backup holds what the offline one holds (nothing was written in between).
    live_manifest = json.loads((live / "manifest.json").read_text())
    assert live_manifest["models"] == manifest["models"]
    assert sorted(live_manifest["collections"], key=str) == sorted(manifest["collections"], key=str)

    # A damaged backup is refused before anything is touched.
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    victim = next(n for n in manifest["files"] if "/shard/" in n)
    content = bytearray((damaged / victim).read_bytes())
    content[len(content) // 2] ^= 0x01
    (damaged / victim).write_bytes(bytes(content))
    before = tree(data)
    refused = facescore("admin", "restore", damaged, "--yes", SCORE_DATA_DIR=str(data))
    assert refused.returncode == 1
    assert "is damaged; nothing was restored" in refused.stderr
    assert f"{victim}: sha256" in refused.stderr
    assert tree(data) == before
    fresh = tmp_path / "fresh"
    refused = facescore("admin", "restore", damaged, SCORE_DATA_DIR=str(fresh))
    assert refused.returncode == 1 and not fresh.exists()

    # Restored into a fresh DATA_DIR, a score service serves the same galleries.
    restored = facescore("admin", "restore", backup, SCORE_DATA_DIR=str(fresh))
    assert restored.returncode == 0, restored.stderr
    assert "verified" in restored.stdout
    assert tree(fresh / "edge") == {
        name.removeprefix("edge/"): entry["sha256"]
        for name, entry in manifest["files"].items()
        if name.startswith("edge/")
    }
    again = start_service("score", **score_env(detect_service, embed_service, fresh))
    assert gallery_state(again) == state
    with grpc.insecure_channel(again.address) as channel:
        reply = score_pb2_grpc.ScoreServiceStub(channel).Identify(
            score_pb2.IdentifyRequest(
                gallery="people", image=vectron_file("players.jpg").read_bytes()
            ),
            timeout=30,
        )
    assert [f.subject_id for f in reply.faces if not f.unknown] == ["yao"]
    before = tree(fresh / "edge")
    refused = facescore("admin", "restore", backup, "--yes", SCORE_DATA_DIR=str(fresh))
    assert refused.returncode == 1 and "is held by the score service" in refused.stderr
    assert tree(fresh / "edge") == before
    assert again.stop() == 0

    # The target holds data now: restore wants --yes, and keeps what it replaces.
    before = tree(fresh)
    refused = facescore("admin", "restore", backup, SCORE_DATA_DIR=str(fresh))
    assert refused.returncode == 1
    assert "already holds data" in refused.stderr and "--yes" in refused.stderr
    assert tree(fresh) == before
    replaced = facescore("admin", "restore", backup, "--yes", SCORE_DATA_DIR=str(fresh))
    assert replaced.returncode == 0, replaced.stderr
    kept = [p for p in fresh.iterdir() if p.name.startswith("edge.before-restore-")]
    assert len(kept) == 1 and f"kept in {kept[0]}" in replaced.stdout
    assert sorted(p.name for p in fresh.iterdir()) == sorted(["edge", kept[0].name])
