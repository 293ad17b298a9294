"""A DATA_DIR written by the previous embedded store (qdrant-client's local mode) is
converted once at start: every gallery, subject and face comes across, the old folder is
kept under a new name, and a second start finds nothing left to convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from services.score.settings import ScoreSettings
from services.score.storage import ModelIdentity, face_id, open_store
from services.score.storage.layout import (
    GalleryRecord,
    SubjectRecord,
    face_payload,
    faces_collection,
    gallery_payload,
    gallery_point_id,
    registry_collection,
    subject_payload,
    subject_point_id,
)

DIM = 8
IDENTITY = ModelIdentity("test", "0" * 64, DIM)


def write_local_mode(data_dir: Path, vectors: np.ndarray) -> list[str]:
    """What the previous GalleryStore wrote: the faces collection (model metadata stamped),
    the registry, a gallery "g" with subjects s0..s4, two faces each."""
    client = QdrantClient(path=str(data_dir / "qdrant"))
    faces = faces_collection("faces", IDENTITY)
    registry = registry_collection("faces")
    client.create_collection(
        faces,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        metadata=IDENTITY.metadata(),
    )
    client.create_collection(
        registry, vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT)
    )
    records = [
        models.PointStruct(
            id=gallery_point_id("g"), vector=[0.0], payload=gallery_payload(GalleryRecord("g", 5))
        )
    ]
    ids = []
    points = []
    for i, vector in enumerate(vectors):
        subject = f"s{i // 2}"
        point = face_id("g", subject, f"{i:064x}", 0)
        ids.append(point)
        payload = face_payload(IDENTITY, "g", subject, point, "", created=i)
        points.append(models.PointStruct(id=point, vector=vector.tolist(), payload=payload))
        if i % 2 == 0:
            record = SubjectRecord("g", subject, f'{{"i":{i}}}', i)
            records.append(
                models.PointStruct(
                    id=subject_point_id("g", subject), vector=[0.0], payload=subject_payload(record)
                )
            )
    client.upsert(faces, points, wait=True)
    client.upsert(registry, records, wait=True)
    client.close()
    return ids


async def test_local_mode_store_is_converted_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((10, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = write_local_mode(tmp_path, vectors)

    store = await open_store(ScoreSettings(data_dir=tmp_path), IDENTITY)
    try:
        assert [g.name for g in await store.list_galleries()] == ["g"]
        subjects, _ = await store.list_subjects("g", 100, None)
        assert sorted(s.subject_id for s in subjects) == [f"s{i}" for i in range(5)]
        assert (await store.require_subject("g", "s2")).metadata_json == '{"i":4}'
        assert await store.count_faces(gallery="g") == len(vectors)
        for i, vector in enumerate(vectors):
            hit = (await store.search("g", vector.tolist(), 1))[0]
            assert (hit.subject_id, hit.face_id) == (f"s{i // 2}", ids[i])
            assert hit.similarity > 0.999
    finally:
        await store.close()
    assert not (tmp_path / "qdrant").exists()
    kept = list(tmp_path.glob("qdrant.converted-*"))
    assert len(kept) == 1 and (kept[0] / "meta.json").is_file()  # nothing deleted

    again = await open_store(ScoreSettings(data_dir=tmp_path), IDENTITY)
    try:
        assert await again.count_faces(gallery="g") == len(vectors)
        assert len(list(tmp_path.glob("qdrant.converted-*"))) == 1
    finally:
        await again.close()
