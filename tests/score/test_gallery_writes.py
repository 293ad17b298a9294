"""GalleryStore's multi-step writes raced against deletes, on the embedded engine.

Every engine call runs in a worker thread, so enrollments and deletes interleave at each of
their steps the way they would against a Qdrant server's round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.errors import FaceScoreError
from services.score.settings import ScoreSettings
from services.score.storage import GalleryStore, ModelIdentity, face_id, open_store

DIM = 8


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GalleryStore]:
    store = await open_store(ScoreSettings(data_dir=tmp_path), ModelIdentity("test", "0" * 64, DIM))
    yield store
    await store.close()


async def enroll(store: GalleryStore, gallery: str, subject: str, n: int) -> None:
    vector = np.random.default_rng(n).standard_normal(DIM).tolist()
    point = face_id(gallery, subject, f"{n:064x}", 0)
    payload = {"gallery": gallery, "subject_id": subject, "face_id": point}
    with contextlib.suppress(FaceScoreError):  # the gallery may be gone: gallery_not_found
        await store.enroll(gallery, subject, point, vector, payload, "")


async def quietly(call: Any) -> None:
    with contextlib.suppress(FaceScoreError):  # subject_not_found, gallery_not_found
        await call


async def subject_records(store: GalleryStore, gallery: str) -> set[str]:
    records, _ = await store.list_subjects(gallery, 1000, None)
    return {record.subject_id for record in records}


async def test_enrollments_racing_subject_deletes(store: GalleryStore) -> None:
    await store.create_gallery("g")
    for round_ in range(8):
        await asyncio.gather(
            *(enroll(store, "g", "racer", 10 * round_ + i) for i in range(5)),
            *(quietly(store.delete_subject("g", "racer")) for _ in range(2)),
        )
        faces = await store.count_faces(gallery="g", subject_id="racer")
        recorded = "racer" in await subject_records(store, "g")
        assert recorded == (faces > 0), f"round {round_}: record {recorded}, {faces} face(s)"


async def test_enrollments_racing_a_gallery_delete(store: GalleryStore) -> None:
    for round_ in range(5):
        await store.create_gallery("doomed")
        await asyncio.gather(
            *(enroll(store, "doomed", f"s{i}", 10 * round_ + i) for i in range(5)),
            quietly(store.delete_gallery("doomed")),
        )
        # Whatever got in before the delete went with it; nothing got in after it.
        assert await store.count_faces(gallery="doomed") == 0, f"round {round_}"
        await store.create_gallery("doomed")
        assert not await subject_records(store, "doomed"), f"round {round_}"
        await store.delete_gallery("doomed")
