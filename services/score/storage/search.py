"""Identify's search: the best face of each of the top_k most similar subjects of a gallery.

Nearest faces of the gallery (the engine's tenant index and query planner choose between
the HNSW graph and an exact scan of a small gallery), kept at the first, best face per subject.
When the faces found hold fewer than top_k subjects (a few subjects with many faces each), the
next query leaves out the subjects already found, so each round adds at least one subject.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.score.storage.engine import Engine
from services.score.storage.layout import Hit

OVERFETCH = 4  # faces asked for per subject still missing


async def best_per_subject(
    engine: Engine, collection: str, gallery: str, vector: Sequence[float], top_k: int
) -> list[Hit]:
    found: dict[str, Hit] = {}
    while len(found) < top_k:
        limit = (top_k - len(found)) * OVERFETCH
        points = await engine.query(
            collection,
            vector,
            limit,
            {"gallery": gallery},
            exclude=("subject_id", list(found)),
            payload=("subject_id",),
        )
        for point in points:
            subject = str(point.payload.get("subject_id", ""))
            if subject and subject not in found:
                found[subject] = Hit(subject, point.score, point.id)
        if len(points) < limit:  # the gallery has nothing more
            break
    return sorted(found.values(), key=lambda hit: -hit.similarity)[:top_k]


async def best_face_of(
    engine: Engine, collection: str, gallery: str, subject_id: str, vector: Sequence[float]
) -> Hit | None:
    points = await engine.query(
        collection, vector, 1, {"gallery": gallery, "subject_id": subject_id}
    )
    if not points:
        return None
    return Hit(subject_id, points[0].score, points[0].id)
