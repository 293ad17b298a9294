"""`facescore admin check [--repair]` on embedded data broken the ways a lost race leaves it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from services.score.settings import ScoreSettings
from services.score.storage import EdgeEngine, GalleryStore, ModelIdentity, face_id, open_store
from services.score.storage.layout import gallery_point_id, subject_point_id
from tests.conftest import REPO

DIM = 8


def admin(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facescore.cli", "admin", "check", *args],
        cwd=REPO,
        env={**os.environ, "SCORE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def build(data_dir: Path) -> GalleryStore:
    """Galleries "kept" (subjects a, b, c) and "gone" (subject x), 2 faces per subject."""
    store = await open_store(ScoreSettings(data_dir=data_dir), ModelIdentity("test", "0" * 64, DIM))
    rng = np.random.default_rng(3)
    for gallery, subjects in (("kept", "abc"), ("gone", "x")):
        await store.create_gallery(gallery)
        for subject in subjects:
            for n in range(2):
                point = face_id(gallery, subject, f"{n:064x}", 0)
                payload = {
                    "gallery": gallery,
                    "subject_id": subject,
                    "face_id": point,
                    "created": 1000 + n,
                    "metadata_json": f'{{"n":{n}}}',
                }
                vector = rng.standard_normal(DIM).tolist()
                await store.enroll(gallery, subject, point, vector, payload, "")
    return store


async def test_check_finds_and_repairs_what_a_lost_race_leaves(tmp_path: Path) -> None:
    store = await build(tmp_path)
    collection, registry = store.collection, store.registry
    await store.close()

    assert admin(tmp_path).returncode == 0  # consistent as written

    # Break it: gallery "gone" lost its record but kept its faces and subject; subject "b"
    # of "kept" lost its record but kept its faces; subject "c" lost its faces (legitimate:
    # its faces were deleted one by one).
    engine = EdgeEngine(tmp_path / "edge")
    await engine.delete(registry, [gallery_point_id("gone")])
    await engine.delete(registry, [subject_point_id("kept", "b")])
    await engine.delete_where(collection, {"gallery": "kept", "subject_id": "c"})
    await engine.close()

    found = admin(tmp_path)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "galleries 1, subjects 3, faces 6" in found.stdout
    assert "2 face(s) of galleries that no longer exist" in found.stdout
    assert "2 face(s) of 1 subject(s) without a record" in found.stdout
    assert "1 subject record(s) of galleries that no longer exist" in found.stdout
    assert "1 subject(s) without faces" in found.stdout and "kept/c" in found.stdout

    repaired = admin(tmp_path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired" in repaired.stdout
    again = admin(tmp_path)
    assert again.returncode == 0 and "consistent" in again.stdout, again.stdout
    assert "kept/c" in again.stdout  # still listed, still kept

    engine = EdgeEngine(tmp_path / "edge")
    try:
        assert await engine.count(collection, {"gallery": "gone"}) == 0
        assert await engine.count(registry, {"gallery": "gone"}) == 0
        record = await engine.retrieve(registry, [subject_point_id("kept", "b")])
        assert record
        # Rebuilt from the faces: the first face's time, the newest face's metadata.
        assert record[0].payload["created"] == 1000
        assert record[0].payload["metadata_json"] == '{"n":1}'
    finally:
        await engine.close()


async def test_check_refuses_storage_in_use(tmp_path: Path) -> None:
    store = await build(tmp_path)
    try:
        busy = admin(tmp_path)
        assert busy.returncode == 1
        assert "held by another process" in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    finally:
        await store.close()
    assert admin(tmp_path / "elsewhere").returncode == 1
