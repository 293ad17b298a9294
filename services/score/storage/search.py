"""Identify's search: the best face of each of the top_k most similar subjects of a gallery.

Nearest faces of the gallery (the engine's tenant index and query planner choose how to
search it), kept at the first, best face per subject. When the faces found hold fewer than
top_k subjects (a few subjects with many faces each), the next query leaves out the subjects
already found, so each round adds at least one subject.

A gallery that holds most of its collection (the usual single-gallery service) is searched
without the gallery filter: the engine scans unfiltered about twice as fast (measured at
100,000 faces, docs/benchmarks.md). That is exact, not a guess: the gallery's faces among
the nearest faces of the whole collection are the gallery's nearest faces, so other
galleries' faces are dropped and, once any come up, the next rounds ask with the filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.score.storage.engine import Engine
from services.score.storage.layout import Hit

OVERFETCH = 4  # faces asked for per subject still missing
UNFILTERED_SHARE = 0.5  # a gallery with more of its collection's faces is searched unfiltered


async def best_per_subject(
    engine: Engine, collection: str, gallery: str, vector: Sequence[float], top_k: int
) -> list[Hit]:
    own = {"gallery": gallery}
    mine, total = await asyncio.gather(
        engine.count(collection, own, estimate=True), engine.count(collection, estimate=True)
    )
    where: dict[str, str] | None = None if mine > UNFILTERED_SHARE * total else own
    found: dict[str, Hit] = {}
    while len(found) < top_k:
        limit = (top_k - len(found)) * OVERFETCH
        points = await engine.query(
            collection,
            vector,
            limit,
            where,
            exclude=("subject_id", list(found)),
            payload=("subject_id", "gallery"),
        )
        ours = [point for point in points if point.payload.get("gallery") == gallery]
        for point in ours:
            subject = str(point.payload.get("subject_id", ""))
            if subject and subject not in found:
                found[subject] = Hit(subject, point.score, point.id)
        if len(points) < limit:  # nothing more matches
            break
        if len(ours) < len(points):  # other galleries' faces came up: filter from here on
            where = own
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
