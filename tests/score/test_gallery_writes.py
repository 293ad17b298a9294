"""GalleryStore's multi-step writes raced against deletes, on the embedded engine.

Every engine call runs in a worker thread, so enrollments and deletes interleave at each of
their steps the way they would against a Qdrant server's round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from services.score.settings import ScoreSettings
from services.score.storage import GalleryStore, ModelIdentity, face_id, open_store
from tests.races import RaceTally

DIM = 8


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GalleryStore]:
    store = await open_store(ScoreSettings(data_dir=tmp_path), ModelIdentity("test", "0" * 64, DIM))
    yield store
    await store.close()


async def enroll(store: GalleryStore, gallery: str, subject: str, n: int) -> object:
    vector = np.random.default_rng(n).standard_normal(DIM).tolist()
    point = face_id(gallery, subject, f"{n:064x}", 0)
    payload = {"gallery": gallery, "subject_id": subject, "face_id": point}
    return await store.enroll(gallery, subject, point, vector, payload, "")


async def subject_records(store: GalleryStore, gallery: str) -> set[str]:
    records, _ = await store.list_subjects(gallery, 1000, None)
    return {record.subject_id for record in records}


async def test_enrollments_racing_subject_deletes(store: GalleryStore) -> None:
    await store.create_gallery("g")
    tally = RaceTally()
    for round_ in range(8):
        await asyncio.gather(
            *(tally.run("enroll", enroll(store, "g", "racer", 10 * round_ + i)) for i in range(5)),
            *(tally.run("delete", store.delete_subject("g", "racer")) for _ in range(2)),
        )
        faces = await store.count_faces(gallery="g", subject_id="racer")
        recorded = "racer" in await subject_records(store, "g")
        assert recorded == (faces > 0), f"round {round_}: record {recorded}, {faces} face(s)"
    # The gallery stays, so nothing may refuse an enrollment; some deletes find the subject.
    assert tally.done["enroll"] == 40, tally
    assert tally.done["delete"] > 0, tally


async def test_enrollments_racing_a_gallery_delete(store: GalleryStore) -> None:
    tally = RaceTally()
    for round_ in range(5):
        await store.create_gallery("doomed")
        await asyncio.gather(
            *(
                tally.run("enroll", enroll(store, "doomed", f"s{i}", 10 * round_ + i))
                for i in range(5)
            ),
            tally.run("delete", store.delete_gallery("doomed")),
        )
        # Whatever got in before the delete went with it; nothing got in after it.
        assert await store.count_faces(gallery="doomed") == 0, f"round {round_}"
        await store.create_gallery("doomed")
        assert not await subject_records(store, "doomed"), f"round {round_}"
        await store.delete_gallery("doomed")
    # Each round's one delete finds its gallery; enrollments ahead of it got in.
    assert tally.done["delete"] == 5, tally
    assert tally.done["enroll"] > 0, tally
