"""Indexing on the embedded engine never takes faces out of search: new faces are found at
once, the HNSW index is built in the background (in a child process) once writes settle,
and calls during a rebuild answer exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.score.settings import ScoreSettings
from services.score.storage import (
    EdgeEngine,
    GalleryStore,
    ModelIdentity,
    Point,
    face_id,
    open_store,
)
from tests.score.vectors import unit

DIM = 32


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


async def test_calls_during_an_index_rebuild_answer_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rebuild exports the points, builds a new shard in a child process and swaps it in:
    searches and writes go on meanwhile, and a write made during it is in the new shard."""
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((6000, DIM)).astype(np.float32))
    store = await store_with(tmp_path, vectors, index_delay_s=3600)  # built only when asked
    engine = store.engine
    assert isinstance(engine, EdgeEngine)
    exported = asyncio.Event()
    release = asyncio.Event()
    real_build = engine._build

    async def held_build(*args: Any) -> None:  # hold the child back until the calls are made
        exported.set()
        await release.wait()
        await real_build(*args)

    monkeypatch.setattr(engine, "_build", held_build)
    try:
        assert await engine.indexed_vectors(store.collection) == 0
        build = asyncio.create_task(engine.optimize(store.collection))
        await exported.wait()
        assert engine.optimizing
        for i in range(0, len(vectors), 300):
            hits = await store.search("g", vectors[i].tolist(), 1)
            assert hits[0].subject_id == f"s{i}"
        newcomer = unit(rng.standard_normal(DIM).astype(np.float32))
        point = face_id("g", "new", "1" * 64, 0)
        payload = {"gallery": "g", "subject_id": "new"}
        await store.enroll("g", "new", point, newcomer.tolist(), payload, "")
        await store.delete_face("g", face_id("g", "s0", "0" * 64, 0))
        assert (await store.search("g", newcomer.tolist(), 1))[0].face_id == point
        release.set()
        searched = 0
        while True:  # and while the child builds, at least once
            i = searched % len(vectors)
            if i:
                assert (await store.search("g", vectors[i].tolist(), 1))[0].subject_id == f"s{i}"
            searched += 1
            if build.done():
                break
        assert await build
        assert await engine.indexed_vectors(store.collection) >= len(vectors) - 1
        # The new shard holds the write and the delete made during the rebuild.
        assert (await store.search("g", newcomer.tolist(), 1))[0].face_id == point
        assert (await store.search("g", vectors[0].tolist(), 1))[0].subject_id != "s0"
        assert await store.count_faces(gallery="g") == len(vectors)
        for i in range(1, len(vectors), 600):
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


async def test_the_rebuild_export_holds_one_page_at_a_time(tmp_path: Path) -> None:
    """The export streams vectors to disk page by page: held as Python floats, a million
    faces took 16 GB and the rebuild was killed for memory. 12,000 faces of 512 floats take
    about 200 MiB that way; one page of 2,048, as the engine returns it, about 70 MiB."""
    import tracemalloc

    from services.score.storage.edge import POINTS_FILE, VECTORS_FILE

    rng = np.random.default_rng(4)
    faces = unit(rng.standard_normal((12_000, 512)).astype(np.float32))
    store = await open_store(
        ScoreSettings(data_dir=tmp_path / "data", index_delay_s=3600),
        ModelIdentity("test", "0" * 64, 512),
    )
    try:
        await store.create_gallery("g")
        for start in range(0, len(faces), 1000):
            await store.engine.upsert(
                store.collection,
                [
                    Point(face_id("g", f"s{i}", "0" * 64, 0), {"gallery": "g"}, faces[i].tolist())
                    for i in range(start, start + 1000)
                ],
            )
        engine = store.engine
        assert isinstance(engine, EdgeEngine)
        export = tmp_path / "export"
        export.mkdir()
        tracemalloc.start()
        await engine._export(store.collection, export)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 120 * 2**20, f"the export held {peak / 2**20:.0f} MiB"
        lines = (export / POINTS_FILE).read_text().splitlines()
        vectors = np.fromfile(export / VECTORS_FILE, np.float32).reshape(-1, 512)
        assert len(lines) == len(vectors) == len(faces)
        by_id = {face_id("g", f"s{i}", "0" * 64, 0): i for i in range(len(faces))}
        for line, vector in zip(lines[::997], vectors[::997], strict=True):
            assert np.allclose(vector, faces[by_id[json.loads(line)[0]]], atol=1e-6)
    finally:
        await store.close()
