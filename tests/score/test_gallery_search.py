"""GalleryStore.search against a brute-force reference, on the embedded engine.

search asks the engine for the gallery's nearest faces and, when they hold fewer than top_k
subjects, asks again without the subjects found; either way the answer must be the best face
of each of the top_k most similar subjects of the gallery, and nothing from another gallery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.score.settings import ScoreSettings
from services.score.storage import EdgeEngine, GalleryStore, ModelIdentity, face_id, open_store
from services.score.storage.engine import Exclude, Point
from tests.score.vectors import unit

DIM = 16


def reference(
    vectors: np.ndarray, subjects: list[str], ids: list[str], query: np.ndarray, top_k: int
) -> list[tuple[str, str]]:
    """(subject, face id) of the best face of each of the top_k most similar subjects."""
    best: dict[str, tuple[float, str]] = {}
    for similarity, subject, point in zip(vectors @ query, subjects, ids, strict=True):
        if subject not in best or similarity > best[subject][0]:
            best[subject] = (float(similarity), point)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:top_k]
    return [(subject, point) for subject, (_, point) in ranked]


async def make_store(tmp_path: Path, **settings: object) -> GalleryStore:
    return await open_store(
        ScoreSettings(data_dir=tmp_path, **settings), ModelIdentity("test", "0" * 64, DIM)
    )


async def fill(
    store: GalleryStore, gallery: str, vectors: np.ndarray, subjects: list[str]
) -> list[str]:
    await store.create_gallery(gallery)
    ids = []
    for index, (vector, subject) in enumerate(zip(vectors, subjects, strict=True)):
        point = face_id(gallery, subject, f"{index:064x}", 0)
        payload = {"gallery": gallery, "subject_id": subject, "face_id": point}
        await store.add_face(point, vector.tolist(), payload)
        ids.append(point)
    return ids


@pytest.mark.parametrize("top_k", [1, 3, 10])
async def test_search_matches_brute_force(tmp_path: Path, top_k: int) -> None:
    rng = np.random.default_rng(top_k)
    vectors = unit(rng.standard_normal((120, DIM)))
    subjects = [f"s{int(i)}" for i in rng.integers(0, 25, len(vectors))]
    other = unit(rng.standard_normal((40, DIM)))
    store = await make_store(tmp_path)
    try:
        ids = await fill(store, "g", vectors, subjects)
        await fill(store, "other", other, [f"s{i}" for i in range(len(other))])
        for query in unit(rng.standard_normal((8, DIM))):
            hits = await store.search("g", query.tolist(), top_k)
            assert [(h.subject_id, h.face_id) for h in hits] == reference(
                vectors, subjects, ids, query, top_k
            )
            best = (vectors @ query).max()
            assert hits[0].similarity == pytest.approx(best, abs=1e-5)
    finally:
        await store.close()


async def test_one_subject_crowding_the_top_is_left_out_of_the_next_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subject "many" holds every face near the query: the first query finds no one else,
    the second leaves "many" out."""
    rng = np.random.default_rng(7)
    query = unit(rng.standard_normal(DIM))
    near = unit(query + 0.05 * rng.standard_normal((30, DIM)))
    far = unit(rng.standard_normal((5, DIM)))
    vectors = np.vstack([near, far])
    subjects = ["many"] * len(near) + [f"few{i}" for i in range(len(far))]
    store = await make_store(tmp_path)
    excluded: list[list[str]] = []
    original = store.engine.query

    async def recorded(*args: object, exclude: Exclude = None, **kwargs: object) -> object:
        excluded.append(sorted(exclude[1]) if exclude else [])
        return await original(*args, exclude=exclude, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.engine, "query", recorded)
    try:
        ids = await fill(store, "g", vectors, subjects)
        hits = await store.search("g", query.tolist(), 3)
        assert excluded == [[], ["many"]]
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            vectors, subjects, ids, query, 3
        )
        assert hits[0].subject_id == "many" and len({h.subject_id for h in hits}) == 3
        # A gallery smaller than what is asked for is answered whole by one query.
        excluded.clear()
        assert len(await store.search("g", query.tolist(), 100)) == 1 + len(far)
        assert excluded == [[]]
    finally:
        await store.close()


async def test_small_gallery_beside_a_large_one(tmp_path: Path) -> None:
    """A small gallery far from the query, beside a large one near it, indexed: the tenant
    index answers it exactly, with nothing of the other gallery."""
    rng = np.random.default_rng(11)
    query = unit(rng.standard_normal(DIM))
    big = unit(query + 0.3 * rng.standard_normal((3000, DIM)))
    small = unit(-query + 0.3 * rng.standard_normal((6, DIM)))
    store = await make_store(tmp_path, index_threshold_kb=10)
    try:
        big_subjects = [f"b{i}" for i in range(len(big))]
        small_subjects = [f"s{i}" for i in range(len(small))]
        await store.create_gallery("big")
        await store.engine.upsert(
            store.collection,
            [
                Point(
                    face_id("big", s, f"{i:064x}", 0),
                    {"gallery": "big", "subject_id": s},
                    v.tolist(),
                )
                for i, (s, v) in enumerate(zip(big_subjects, big, strict=True))
            ],
        )
        small_ids = await fill(store, "small", small, small_subjects)
        engine = store.engine
        assert isinstance(engine, EdgeEngine)
        await engine.optimize(store.collection)  # now, or after the background one
        assert await engine.indexed_vectors(store.collection) >= len(big)
        hits = await store.search("small", query.tolist(), 3)
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            small, small_subjects, small_ids, query, 3
        )
    finally:
        await store.close()


async def test_a_gallery_holding_most_faces_is_searched_without_the_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine scans unfiltered faster; the gallery's faces among the collection's nearest
    are the gallery's nearest, and once another gallery's faces come up the search filters."""
    rng = np.random.default_rng(21)
    vectors = unit(rng.standard_normal((200, DIM)))
    subjects = [f"s{i}" for i in range(len(vectors))]
    cluster = unit(rng.standard_normal(DIM))
    other = unit(cluster + 0.1 * rng.standard_normal((20, DIM)))  # close together
    store = await make_store(tmp_path)
    asked: list[object] = []
    original = store.engine.query

    async def recorded(
        name: str, vector: object, limit: int, where: object, **kw: object
    ) -> object:
        asked.append(where)
        return await original(name, vector, limit, where, **kw)  # type: ignore[arg-type]

    try:
        ids = await fill(store, "big", vectors, subjects)
        await fill(store, "small", other, [f"o{i}" for i in range(len(other))])
        monkeypatch.setattr(store.engine, "query", recorded)
        # Near a face of "big", far from "small": one unfiltered query answers.
        query = unit(vectors[3] - cluster)
        hits = await store.search("big", query.tolist(), 3)
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            vectors, subjects, ids, query, 3
        )
        assert asked == [None]
        # Near "small"'s faces: they fill the unfiltered answer, are dropped, and the next
        # query filters; the answer is still big's own nearest.
        asked.clear()
        query = cluster
        hits = await store.search("big", query.tolist(), 3)
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            vectors, subjects, ids, query, 3
        )
        assert asked == [None, {"gallery": "big"}]
        # The small gallery is searched with its filter from the start.
        asked.clear()
        hits = await store.search("small", query.tolist(), 3)
        assert {h.subject_id for h in hits} <= {f"o{i}" for i in range(len(other))}
        assert asked == [{"gallery": "small"}]
    finally:
        await store.close()
