"""A DATA_DIR written by the previous embedded store (qdrant-client's local mode, in
DATA_DIR/qdrant) is converted to the engine's shards once, at start.

Every collection is copied whole (ids, vectors, payloads), counted on both sides, and only
then is DATA_DIR/qdrant renamed to DATA_DIR/qdrant.converted-<time>: kept, never deleted,
so nothing is lost whatever happens, and an interrupted conversion simply runs again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import structlog

from services.common.errors import FaceScoreError, Reason
from services.score.storage import layout
from services.score.storage.engine import CollectionSpec, Engine, Point

LEGACY_DIR = "qdrant"
LEGACY_META = "meta.json"
BATCH = 512
log = structlog.get_logger(__name__)


def legacy_store(data_dir: Path) -> Path | None:
    """DATA_DIR/qdrant when it holds a local-mode store, else None."""
    path = data_dir / LEGACY_DIR
    return path if (path / LEGACY_META).is_file() else None


def _read(path: Path) -> dict[str, tuple[CollectionSpec, list[Point]]]:
    """Every collection of a local-mode store, whole (it held at most some 20,000 faces:
    qdrant-client warns beyond that, so this fits in memory)."""
    from qdrant_client import QdrantClient, models

    try:
        client = QdrantClient(path=str(path))
    except RuntimeError as error:  # "already accessed by another instance"
        raise FaceScoreError(
            Reason.DEPENDENCY_UNAVAILABLE,
            f"{path} (the previous embedded store, to be converted) is in use: stop the "
            f"process that holds it ({error})",
            grpc.StatusCode.FAILED_PRECONDITION,
            metadata={"dependency": "qdrant", "storage": str(path)},
        ) from error
    found: dict[str, tuple[CollectionSpec, list[Point]]] = {}
    try:
        for collection in client.get_collections().collections:
            info = client.get_collection(collection.name)
            vectors = info.config.params.vectors
            assert isinstance(vectors, models.VectorParams)
            registry = collection.name.endswith(f"_{layout.REGISTRY_SUFFIX}")
            spec = CollectionSpec(
                vectors.size,
                "cosine" if vectors.distance == models.Distance.COSINE else "dot",
                dict(info.config.metadata or {}),
                layout.REGISTRY_INDEXES if registry else layout.FACE_INDEXES,
            )
            points: list[Point] = []
            offset: Any = None
            while True:
                records, offset = client.scroll(
                    collection.name, limit=1024, offset=offset, with_payload=True, with_vectors=True
                )
                points += [
                    Point(str(r.id), dict(r.payload or {}), [float(x) for x in r.vector])  # type: ignore[union-attr,arg-type]
                    for r in records
                ]
                if offset is None:
                    break
            found[collection.name] = (spec, points)
    finally:
        client.close()
    return found


async def convert_local_mode(data_dir: Path, engine: Engine) -> int:
    """Convert DATA_DIR/qdrant if it is there; the number of points copied."""
    source = legacy_store(data_dir)
    if source is None:
        return 0
    log.warning("converting the previous embedded store", source=str(source))
    collections = await asyncio.to_thread(_read, source)
    copied = 0
    for name, (spec, points) in collections.items():
        if await engine.spec(name) is not None:  # left by an interrupted conversion
            await engine.drop(name)
        await engine.create(name, spec)
        for start in range(0, len(points), BATCH):
            await engine.upsert(name, points[start : start + BATCH])
        stored = await engine.count(name)
        if stored != len(points):
            raise FaceScoreError(
                Reason.INTERNAL,
                f"converting {source}: collection {name} holds {stored} points after the "
                f"copy, {len(points)} before; {source} is left as it was",
                grpc.StatusCode.INTERNAL,
            )
        copied += stored
    await engine.flush()
    kept = source.with_name(f"{LEGACY_DIR}.converted-{time.strftime('%Y%m%dT%H%M%S')}")
    source.rename(kept)
    log.warning(
        "previous embedded store converted",
        collections=len(collections),
        points=copied,
        kept_as=str(kept),
    )
    return copied
