"""Indexing on the embedded engine never takes faces out of search: new faces are found at
once, the HNSW index is built in the background once writes settle, and searches during
a build answer exactly as brute force does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from services.score.settings import ScoreSettings
from services.score.storage import (
    EdgeEngine,
    GalleryStore,
    ModelIdentity,
    Point,
    face_id,
    open_store,
)

DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normalised


async def store_with(tmp_path: Path, vectors: np.ndarray, index_delay_s: float) -> GalleryStore:
    store = await open_store(
        ScoreSettings(data_dir=tmp_path, index_threshold_kb=10, index_delay_s=index_delay_s),
        ModelIdentity("test", "0" * 64, DIM),
    )
    await store.create_gallery("g")
    points = [
        Point(
            face_id("g", f"s{i}", "0" * 64, 0), {"gallery": "g", "subject_id": f"s{i}"}, v.tolist()
        )
        for i, v in enumerate(vectors)
    ]
    for start in range(0, len(points), 1000):
        await store.engine.upsert(store.collection, points[start : start + 1000])
    return store


async def test_searches_during_an_index_build_answer_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((6000, DIM)).astype(np.float32))
    store = await store_with(tmp_path, vectors, index_delay_s=3600)  # built only when asked
    engine = store.engine
    assert isinstance(engine, EdgeEngine)
    try:
        assert await engine.indexed_vectors(store.collection) == 0
        build = asyncio.create_task(engine.optimize(store.collection))
        while not engine.optimizing:
            await asyncio.sleep(0)
        searched = 0
        while True:  # at least once, and for as long as the build runs
            query = vectors[searched % len(vectors)]
            hits = await store.search("g", query.tolist(), 1)
            assert hits[0].subject_id == f"s{searched % len(vectors)}"
            searched += 1
            if build.done():
                break
        assert await build
        assert await engine.indexed_vectors(store.collection) > 0
        # After the build, the index answers the stored faces too.
        for i in range(0, len(vectors), 600):
            hits = await store.search("g", vectors[i].tolist(), 1)
            assert hits[0].subject_id == f"s{i}"
    finally:
        await store.close()


async def test_new_faces_are_found_at_once_and_indexed_in_the_background(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng.standard_normal((3000, DIM)).astype(np.float32))
    store = await store_with(tmp_path, vectors, index_delay_s=0.05)
    engine = store.engine
    assert isinstance(engine, EdgeEngine)
    try:
        newcomer = unit(rng.standard_normal(DIM).astype(np.float32))
        point = face_id("g", "new", "1" * 64, 0)
        await store.enroll(
            "g", "new", point, newcomer.tolist(), {"gallery": "g", "subject_id": "new"}, ""
        )
        hits = await store.search("g", newcomer.tolist(), 1)  # before any index exists
        assert (hits[0].subject_id, hits[0].face_id) == ("new", point)
        await engine.settled()
        assert await engine.indexed_vectors(store.collection) >= len(vectors)
        hits = await store.search("g", newcomer.tolist(), 1)
        assert (hits[0].subject_id, hits[0].face_id) == ("new", point)
    finally:
        await store.close()
