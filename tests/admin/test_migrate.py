"""`facescore admin migrate`: every gallery from the embedded engine to a Qdrant server and
back, resumable, verified.

The embedded side is the real engine. No Qdrant server binary runs on these machines, so the
server side is qdrant-client's in-memory emulation behind the same ServerEngine (the very
qdrant-client calls a server gets); the fake in fake_qdrant.py only knows snapshots.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from facescore.admin import migrate as migrate_module
from facescore.admin.backup import AdminError
from facescore.admin.migrate import STATE_FILE, migrate
from services.score.settings import ScoreSettings
from services.score.storage import GalleryStore, ModelIdentity, ServerEngine, face_id, open_store

DIM = 8
IDENTITY = ModelIdentity("test", "0" * 64, DIM)
FACES = 1300  # more than two pages


async def build(data_dir: Path, vectors: np.ndarray) -> None:
    store = await open_store(ScoreSettings(data_dir=data_dir), IDENTITY)
    try:
        for gallery in ("big", "small"):
            await store.create_gallery(gallery)
        for i, vector in enumerate(vectors):
            gallery = "small" if i < 26 else "big"
            subject = f"p{i % 400}"
            point = face_id(gallery, subject, f"{i:064x}", 0)
            payload = {"gallery": gallery, "subject_id": subject, "face_id": point, "n": i}
            if i < 30:  # a few through enroll, with subject records and metadata
                await store.enroll(
                    gallery, subject, point, vector.tolist(), payload, f'{{"i":{i}}}'
                )
            else:
                await store.add_face(point, vector.tolist(), payload)
    finally:
        await store.close()


async def snapshot(store: GalleryStore, queries: np.ndarray) -> dict[str, Any]:
    subjects = {}
    for gallery in await store.list_galleries():
        records, _ = await store.list_subjects(gallery.name, 1000, None)
        subjects[gallery.name] = sorted((r.subject_id, r.metadata_json) for r in records)
    hits = [
        [
            (h.subject_id, h.face_id, round(h.similarity, 5))
            for h in await store.search(g, q.tolist(), 3)
        ]
        for g in ("big", "small")
        for q in queries
    ]
    counts = {g: await store.count_faces(gallery=g) for g in ("big", "small")}
    return {"subjects": subjects, "hits": hits, "counts": counts}


async def state_of(data_dir: Path, queries: np.ndarray) -> dict[str, Any]:
    store = await open_store(ScoreSettings(data_dir=data_dir), IDENTITY)
    try:
        return await snapshot(store, queries)
    finally:
        await store.close()


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
def test_migrate_round_trip_resumes_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((FACES, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[::97] + 0.1
    source, back = tmp_path / "source", tmp_path / "back"
    asyncio.run(build(source, vectors))
    before = asyncio.run(state_of(source, queries))

    server = AsyncQdrantClient(location=":memory:")  # the stand-in for a Qdrant server
    monkeypatch.setattr(
        migrate_module,
        "server_engine",
        lambda settings, url: ServerEngine(url, None, 5.0, client=server),
    )

    async def no_close() -> None:  # the stand-in lives across the two runs
        return None

    monkeypatch.setattr(ServerEngine, "close", lambda self: no_close())

    # Interrupted after the first page of faces: the state file keeps the offset reached.
    original = ServerEngine.upsert
    calls = {"n": 0}

    async def failing(self: ServerEngine, name: str, points: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the registry's one page, the first page of faces, then this
            raise ConnectionError("the network went away")
        await original(self, name, points)

    monkeypatch.setattr(ServerEngine, "upsert", failing)
    with pytest.raises(ConnectionError):
        migrate(ScoreSettings(data_dir=source), to_url="http://qdrant:6333", say=lambda _: None)
    assert (source / STATE_FILE).is_file()
    monkeypatch.setattr(ServerEngine, "upsert", original)
    said: list[str] = []
    copied = migrate(ScoreSettings(data_dir=source), to_url="http://qdrant:6333", say=said.append)
    assert copied == FACES - 512  # the registry and the first page were not copied again
    assert any("verified" in line for line in said)
    assert not (source / STATE_FILE).exists()

    # And back into a fresh DATA_DIR: the same galleries, subjects, faces and answers.
    migrate(ScoreSettings(data_dir=back), from_url="http://qdrant:6333", say=lambda _: None)
    assert asyncio.run(state_of(back, queries)) == before
    assert before["counts"] == {"big": FACES - 26, "small": 26}


def test_migrate_refuses_while_score_holds_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((40, DIM)).astype(np.float32)
    asyncio.run(build(tmp_path, vectors))

    async def held() -> str:
        store = await open_store(ScoreSettings(data_dir=tmp_path), IDENTITY)
        try:
            with pytest.raises(AdminError) as refused:
                await asyncio.to_thread(
                    migrate, ScoreSettings(data_dir=tmp_path), to_url="http://qdrant:6333"
                )
            return str(refused.value)
        finally:
            await store.close()

    assert "held by another process" in asyncio.run(held())
