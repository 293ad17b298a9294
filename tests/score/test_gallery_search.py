"""GalleryStore.search against a brute-force reference, on embedded Qdrant.

search answers from one plain nearest-neighbour query when it can and from Qdrant's grouped
query otherwise; either way the answer must be the best face of each of the top_k most
similar subjects of the gallery, and nothing from another gallery.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.score.gallery import GalleryStore, ModelIdentity, face_id
from services.score.settings import ScoreSettings

DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normalised


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


def record_calls(
    monkeypatch: pytest.MonkeyPatch,
    store: GalleryStore,
    method: str,
    calls: list[object],
    note: Callable[[dict[str, object]], object],
) -> None:
    """Wrap one method of the store's Qdrant client: `note(kwargs)` is appended per call."""
    original = getattr(store.client, method)

    async def recorded(*args: object, **kwargs: object) -> object:
        calls.append(note(kwargs))
        return await original(*args, **kwargs)

    monkeypatch.setattr(store.client, method, recorded)


async def make_store(tmp_path: Path) -> GalleryStore:
    settings = ScoreSettings(data_dir=tmp_path)
    store = GalleryStore(settings, ModelIdentity("test", "0" * 64, DIM))
    await store.open()
    return store


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


async def test_one_subject_crowding_the_top_falls_back_to_grouping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subject "many" holds every face near the query: the plain query finds no one else."""
    rng = np.random.default_rng(7)
    query = unit(rng.standard_normal(DIM))
    near = unit(query + 0.05 * rng.standard_normal((30, DIM)))
    far = unit(rng.standard_normal((5, DIM)))
    vectors = np.vstack([near, far])
    subjects = ["many"] * len(near) + [f"few{i}" for i in range(len(far))]
    calls: list[object] = []
    store = await make_store(tmp_path)
    record_calls(monkeypatch, store, "query_points_groups", calls, lambda _: "groups")
    try:
        ids = await fill(store, "g", vectors, subjects)
        hits = await store.search("g", query.tolist(), 3)
        assert calls == ["groups"]
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            vectors, subjects, ids, query, 3
        )
        assert hits[0].subject_id == "many" and len({h.subject_id for h in hits}) == 3
        # A gallery smaller than the over-fetch is answered whole by the plain query.
        calls.clear()
        assert len(await store.search("g", query.tolist(), 100)) == 1 + len(far)
        assert calls == []
    finally:
        await store.close()


async def test_embedded_search_skips_the_filter_only_when_that_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the gallery filter while the gallery fills the nearest faces; with it otherwise."""
    rng = np.random.default_rng(11)
    query = unit(rng.standard_normal(DIM))
    big = unit(query + 0.3 * rng.standard_normal((60, DIM)))  # all near the query
    small = unit(-query + 0.3 * rng.standard_normal((6, DIM)))  # all far from it
    store = await make_store(tmp_path)
    filters: list[object] = []
    record_calls(
        monkeypatch, store, "query_points", filters, lambda kw: kw.get("query_filter") is not None
    )
    try:
        big_subjects = [f"b{i}" for i in range(len(big))]
        small_subjects = [f"s{i}" for i in range(len(small))]
        big_ids = await fill(store, "big", big, big_subjects)
        small_ids = await fill(store, "small", small, small_subjects)
        filters.clear()
        hits = await store.search("big", query.tolist(), 5)
        assert filters == [False]  # one unfiltered query answered
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            big, big_subjects, big_ids, query, 5
        )
        filters.clear()
        hits = await store.search("small", query.tolist(), 3)
        assert filters == [False, True]  # "big" filled the nearest faces: filtered after
        assert [(h.subject_id, h.face_id) for h in hits] == reference(
            small, small_subjects, small_ids, query, 3
        )
    finally:
        await store.close()
