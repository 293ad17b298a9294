"""score's snapshot of its embedded storage, taken while it serves: a multi-step write in
flight finishes first, writes that come meanwhile wait for the copy, reads go on, and the
copy opens as a store holding that one point in time."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from services.common.errors import FaceScoreError
from services.score.settings import ScoreSettings
from services.score.storage import (
    GalleryStore,
    ModelIdentity,
    Point,
    ServerEngine,
    StorageInUse,
    face_id,
    open_store,
)
from services.score.storage.edge import OLD_DIR, held
from tests.conftest import REPO

DIM = 32
IDENTITY = ModelIdentity("test", "0" * 64, DIM)


async def open_at(data_dir: Path) -> GalleryStore:
    return await open_store(ScoreSettings(data_dir=data_dir, index_delay_s=3600), IDENTITY)


async def enroll(store: GalleryStore, gallery: str, subject: str, seed: int) -> str:
    vector = np.random.default_rng(seed).standard_normal(DIM)
    vector /= np.linalg.norm(vector)
    point = face_id(gallery, subject, f"{seed:064x}", 0)
    payload = {"gallery": gallery, "subject_id": subject}
    await store.enroll(gallery, subject, point, vector.tolist(), payload, "")
    return point


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # a few turns of the event loop; pytest's timeout is the backstop
        await asyncio.sleep(0)


async def faces_and_subjects(store: GalleryStore, gallery: str) -> tuple[set[str], set[str]]:
    faces, _ = await store.engine.scroll(store.collection, {"gallery": gallery}, 100, None)
    subjects, _ = await store.list_subjects(gallery, 100, None)
    return {p.id for p in faces}, {s.subject_id for s in subjects}


async def test_snapshot_waits_for_a_write_in_flight_and_holds_new_writes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_at(tmp_path / "live")
    try:
        await store.create_gallery("g")
        await store.create_gallery("h")
        a = await enroll(store, "g", "a", 1)
        # Enrollment b stops between its two writes: its face is stored, its subject not yet.
        between, go_on = asyncio.Event(), asyncio.Event()
        real_upsert = store.engine.upsert

        async def upsert(name: str, points: list[Point]) -> None:
            if name == store.registry and points[0].payload.get("subject_id") == "b":
                between.set()
                await go_on.wait()
            await real_upsert(name, points)

        monkeypatch.setattr(store.engine, "upsert", upsert)
        b = asyncio.create_task(enroll(store, "g", "b", 2))
        await between.wait()
        snapshot = asyncio.create_task(store.snapshot(tmp_path / "snap"))
        await until(lambda: store.writes.closed)  # the snapshot waits for b to finish
        # A write to another gallery, made now, waits for the copy; reads go on.
        c = asyncio.create_task(enroll(store, "h", "c", 3))
        assert await store.subject("g", "a") is not None
        assert await store.count_faces(gallery="g") == 2
        assert not snapshot.done() and not c.done()
        go_on.set()
        taken = await snapshot
        b_face, c_face = await b, await c
        assert (taken.faces, taken.subjects, taken.galleries) == (2, 2, 2)
        assert taken.collections == sorted([store.collection, store.registry])
        assert await faces_and_subjects(store, "h") == ({c_face}, {"c"})
    finally:
        await store.close()

    # The copy is a store of its own: b whole (face and subject), c not there.
    shutil.copytree(tmp_path / "snap", tmp_path / "restored" / "edge")
    restored = await open_at(tmp_path / "restored")
    try:
        assert await faces_and_subjects(restored, "g") == ({a, b_face}, {"a", "b"})
        assert await faces_and_subjects(restored, "h") == (set(), set())
        assert [g.name for g in await restored.list_galleries()] == ["g", "h"]
    finally:
        await restored.close()


async def test_a_snapshot_folder_is_new_and_whole(tmp_path: Path) -> None:
    store = await open_at(tmp_path / "live")
    try:
        await store.create_gallery("g")
        await enroll(store, "g", "a", 1)
        first = await store.snapshot(tmp_path / "snap")
        assert first.faces == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "snap"]  # no staging left
        with pytest.raises(OSError):  # never written over
            await store.snapshot(tmp_path / "snap")
        await enroll(store, "g", "b", 2)  # writes go on after a failed snapshot too
        assert await store.count_faces(gallery="g") == 2
    finally:
        await store.close()


async def test_held_refuses_a_running_store_without_touching_a_swap_in_progress(
    tmp_path: Path,
) -> None:
    """An admin command run beside score (held() finds it holding the store) must not finish
    a swap that score itself is making (what a rebuild leaves until it deletes it)."""
    store = await open_at(tmp_path)
    try:
        first = sorted([store.collection, store.registry])[0]
        old = tmp_path / "edge" / first / OLD_DIR
        old.mkdir()
        (old / "segment").write_text("the replaced shard, being deleted by score")
        with pytest.raises(StorageInUse), held(tmp_path / "edge"):
            pass
        assert (old / "segment").is_file()
    finally:
        await store.close()


HOLD = """
import sys
from pathlib import Path
from services.score.storage import StorageInUse
from services.score.storage.edge import held
try:
    with held(Path(sys.argv[1])):
        print("opened")
except StorageInUse:
    print("refused")
"""


async def test_an_opener_refused_beside_score_leaves_its_files_alone(tmp_path: Path) -> None:
    """qdrant-edge's load() of a held shard damages the holder's files before it fails
    (its next flush: "Tracker journal ... is shorter than expected"): admin commands beside
    a running score must find the lock without loading anything."""
    store = await open_at(tmp_path)
    try:
        await store.create_gallery("g")
        await enroll(store, "g", "a", 1)
        await store.engine.flush()
        env = {**os.environ, "SCORE_DATA_DIR": str(tmp_path), "SCORE_QDRANT_URL": ""}
        for command in (
            [sys.executable, "-c", HOLD, str(tmp_path / "edge")],
            [sys.executable, "-m", "facescore.cli", "admin", "check"],
        ):
            done = await asyncio.to_thread(
                subprocess.run, command, cwd=REPO, env=env, capture_output=True, text=True
            )
            assert "refused" in done.stdout or "held by another process" in done.stderr, done
        await enroll(store, "g", "b", 2)
        await store.engine.flush()
    finally:
        await store.close()
    again = await open_at(tmp_path)
    try:
        assert await again.count_faces(gallery="g") == 2
    finally:
        await again.close()


async def test_a_qdrant_server_is_not_snapshotted_by_score(tmp_path: Path) -> None:
    """With a Qdrant server the backup uses Qdrant's own snapshots; score's call says so
    (refused before any call to the server, none of which could run here)."""
    settings = ScoreSettings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:9")
    client = AsyncQdrantClient(url="http://127.0.0.1:9", check_compatibility=False)
    engine = ServerEngine("http://127.0.0.1:9", None, 1.0, client=client)
    store = GalleryStore(settings, IDENTITY, engine)
    try:
        with pytest.raises(FaceScoreError) as refused:
            await store.snapshot(tmp_path / "snap")
        assert refused.value.code.name == "FAILED_PRECONDITION"
        assert "Qdrant's snapshots" in refused.value.message
        assert not (tmp_path / "snap").exists()
    finally:
        await store.close()
