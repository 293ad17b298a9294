"""`facescore admin migrate --to URL` / `--from URL`: every gallery between the embedded
storage (SCORE_DATA_DIR) and a Qdrant server's collections.

Photos are never stored, so re-enrolling is no way to a Qdrant cluster: this copies the
faces collections (ids, vectors, payloads) and the registry (galleries, subjects) as they
are. The embedded side is held while it runs (the score service must be stopped). It is
resumable: pages are idempotent upserts of the same ids, and the offset reached in each
collection is saved in DATA_DIR/migrate-state.json after every page, so a second run goes on
where the first stopped. At the end every collection is counted on both sides and a sample
of vectors is compared; the state file is removed only then.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facescore.admin.backup import AdminError
from services.common.errors import FaceScoreError
from services.score.settings import ScoreSettings
from services.score.storage import Engine, ServerEngine, edge_root, layout, open_engine

Say = Callable[[str], None]
PAGE = 512
SAMPLE = 64
STATE_FILE = "migrate-state.json"


def server_engine(settings: ScoreSettings, url: str) -> ServerEngine:
    key = settings.qdrant_api_key
    return ServerEngine(url, key.get_secret_value() if key else None, settings.qdrant_timeout_s)


class Progress:
    """Offsets reached, per direction and collection, saved after every page."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.data: dict[str, dict[str, Any]] = data if isinstance(data, dict) else {}

    def offset(self, collection: str) -> Any:
        return self.data.get(self.key, {}).get(collection)

    def save(self, collection: str, offset: Any) -> None:
        self.data.setdefault(self.key, {})[collection] = offset
        staged = self.path.with_suffix(".tmp")
        staged.write_text(json.dumps(self.data))
        staged.replace(self.path)

    def done(self) -> None:
        self.data.pop(self.key, None)
        if self.data:
            self.path.write_text(json.dumps(self.data))
        else:
            self.path.unlink(missing_ok=True)


async def copy_collection(
    source: Engine, target: Engine, name: str, progress: Progress, say: Say
) -> int:
    spec = await source.spec(name)
    assert spec is not None
    found = await target.spec(name)
    if found is None:
        await target.create(name, spec)
    elif (found.size, found.distance) != (spec.size, spec.distance):
        raise AdminError(
            f"{name} exists on the target with dimension {found.size} and distance "
            f"{found.distance}; the source has {spec.size}, {spec.distance}: nothing copied"
        )
    offset = progress.offset(name)
    if offset == "done":
        return 0
    copied = 0
    while True:
        points, offset = await source.scroll(name, None, PAGE, offset, with_vector=True)
        if points:
            await target.upsert(name, points)
            copied += len(points)
        progress.save(name, offset if offset is not None else "done")
        if offset is None:
            break
    say(f"  {name}: {copied} point(s) copied")
    return copied


async def verify(source: Engine, target: Engine, name: str) -> None:
    """Counts equal, and a random sample of vectors and payloads equal, or AdminError."""
    expected, found = await source.count(name), await target.count(name)
    if expected != found:
        raise AdminError(f"{name}: {expected} point(s) in the source, {found} in the target")
    ids: list[str] = []
    offset = None
    while len(ids) < 20 * SAMPLE:
        points, offset = await source.scroll(name, None, PAGE, offset)
        ids += [p.id for p in points]
        if offset is None:
            break
    sample = random.sample(ids, min(SAMPLE, len(ids)))
    left = {p.id: p for p in await source.retrieve(name, sample, with_vector=True)}
    right = {p.id: p for p in await target.retrieve(name, sample, with_vector=True)}
    for point_id, point in left.items():
        other = right.get(point_id)
        if other is None or other.payload != point.payload:
            raise AdminError(f"{name}: point {point_id} differs in the target")
        if not np.allclose(point.vector or [], other.vector or [], atol=1e-5):
            raise AdminError(f"{name}: the vector of point {point_id} differs in the target")


async def _migrate(settings: ScoreSettings, url: str, to_server: bool, say: Say) -> int:
    embedded_settings = settings.model_copy(update={"qdrant_url": None})
    embedded = await open_engine(embedded_settings)
    server = server_engine(settings, url)
    source, target = (embedded, server) if to_server else (server, embedded)
    direction = f"{'to' if to_server else 'from'} {url}"
    key = hashlib.sha256(direction.encode()).hexdigest()[:16]
    progress = Progress(settings.data_dir / STATE_FILE, key)
    prefix = settings.collection_prefix
    try:
        for name in await embedded.collections():  # opens (holds) every shard first
            await embedded.count(name)
        names = [
            n
            for n in await source.collections()
            if n == layout.registry_collection(prefix) or layout.is_faces_collection(prefix, n)
        ]
        if layout.registry_collection(prefix) not in names:
            raise AdminError(
                f"no {layout.registry_collection(prefix)} in the source: nothing to copy"
            )
        say(f"migrating {direction}: {', '.join(names)}")
        total = 0
        for name in names:
            total += await copy_collection(source, target, name, progress, say)
        await target.flush()
        for name in names:
            await verify(source, target, name)
        progress.done()
        say(f"verified: every collection counted on both sides, {SAMPLE} vectors each compared")
        return total
    finally:
        await server.close()
        await embedded.close()


def migrate(
    settings: ScoreSettings,
    *,
    to_url: str | None = None,
    from_url: str | None = None,
    say: Say = print,
) -> int:
    """Copy every gallery between the embedded storage and the server at the URL given."""
    if bool(to_url) == bool(from_url):
        raise AdminError("give exactly one of --to URL or --from URL")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if to_url and not Path(edge_root(settings)).is_dir():
        raise AdminError(f"no embedded storage in {edge_root(settings)}: nothing to copy")
    try:
        return asyncio.run(_migrate(settings, str(to_url or from_url), bool(to_url), say))
    except FaceScoreError as error:  # storage held by score, server unreachable: one line
        raise AdminError(error.message) from error
