"""Embedded storage: Qdrant's own engine in-process (qdrant-edge-py), one shard per collection.

DATA_DIR/edge/<collection>/ holds the shard (segments and a write-ahead log) and
collection.json (the vector size, distance, indexes and facescore's metadata, written last:
a folder without it is an unfinished create). Only one process may open a shard: its WAL is
locked, and a second opener gets WouldBlock, which becomes `StorageInUse`.

Engine calls run in worker threads. New points land in an appendable segment and are
searchable at once (exactly); after writes settle, `optimize()` builds the HNSW index in a
worker thread while searches go on against the segments as they were.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import grpc
import qdrant_edge as qe
import structlog

from services.common.errors import FaceScoreError, Reason
from services.score.storage.engine import (
    CollectionSpec,
    Exclude,
    Point,
    Scored,
    SearchTuning,
    Where,
)

SPEC_FILE = "collection.json"
SHARD_DIR = "shard"
log = structlog.get_logger(__name__)
T = TypeVar("T")


class StorageInUse(FaceScoreError):
    """Another process (a running score service) holds the embedded storage."""

    def __init__(self, root: Path, detail: str) -> None:
        super().__init__(
            Reason.DEPENDENCY_UNAVAILABLE,
            f"the embedded storage {root} is held by another process, the score service that "
            f"runs on it: use score's API, or stop it first ({detail})",
            grpc.StatusCode.UNAVAILABLE,
            metadata={"dependency": "qdrant", "storage": str(root)},
        )


def edge_filter(where: Where | None, exclude: Exclude = None) -> qe.Filter | None:
    must: list[Any] = [
        qe.FieldCondition(key=k, match=qe.MatchValue(value=v)) for k, v in (where or {}).items()
    ]
    must_not: list[Any] = []
    if exclude and exclude[1]:
        must_not.append(qe.FieldCondition(key=exclude[0], match=qe.MatchAny(any=list(exclude[1]))))
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _id(value: UUID | int | str) -> str:
    return str(value)


def _vector(value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, dict):  # the unnamed vector, keyed ""
        value = value.get("")
    return [float(x) for x in value] if value is not None else None


class EdgeEngine:
    mode = "embedded"

    def __init__(
        self,
        root: Path,
        *,
        tuning: SearchTuning | None = None,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        indexing_threshold_kb: int = 20_000,
        quantization: bool = False,
        on_disk: bool = False,
        index_delay_s: float = 2.0,
    ) -> None:
        self.root = root
        self.tuning = tuning or SearchTuning()
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.indexing_threshold_kb = indexing_threshold_kb
        self.quantization = quantization
        self.on_disk = on_disk
        self.index_delay_s = index_delay_s
        self._shards: dict[str, qe.EdgeShard] = {}
        self._specs: dict[str, CollectionSpec] = {}
        self._written: set[str] = set()
        self._wake = asyncio.Event()
        self._indexer: asyncio.Task[None] | None = None
        self._optimizing: asyncio.Future[bool] | None = None

    # Lifecycle.

    async def close(self) -> None:
        if self._indexer is not None:
            self._indexer.cancel()
            with suppress(asyncio.CancelledError):
                await self._indexer
        if self._optimizing is not None:  # a thread cannot be stopped: let the build finish
            with suppress(Exception):
                await self._optimizing
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            await asyncio.to_thread(self._close_shard, shard)

    @staticmethod
    def _close_shard(shard: qe.EdgeShard) -> None:
        shard.flush()
        shard.close()

    async def ping(self) -> None:
        if not self.root.is_dir():
            raise FaceScoreError(
                Reason.DEPENDENCY_UNAVAILABLE,
                f"embedded storage {self.root} is gone",
                grpc.StatusCode.UNAVAILABLE,
                metadata={"dependency": "qdrant"},
            )

    async def flush(self) -> None:
        for shard in list(self._shards.values()):
            await self._run(shard.flush)

    # Collections.

    async def collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / SPEC_FILE).is_file())

    async def spec(self, name: str) -> CollectionSpec | None:
        if name in self._specs:
            return self._specs[name]
        path = self.root / name / SPEC_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        spec = CollectionSpec(
            int(data["size"]), data["distance"], dict(data["metadata"]), dict(data["indexes"])
        )
        self._specs[name] = spec
        return spec

    async def create(self, name: str, spec: CollectionSpec) -> None:
        folder = self.root / name
        if folder.exists():  # an unfinished create: nothing was ever written to it
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shard = await self._run(qe.EdgeShard.create, str(folder / SHARD_DIR), self._config(spec))
        for field, tenant in spec.indexes.items():
            params = qe.KeywordIndexParams(is_tenant=tenant or None)
            await self._run(shard.update, qe.UpdateOperation.create_field_index(field, params))
        await self._run(shard.flush)
        data = {
            "size": spec.size,
            "distance": spec.distance,
            "metadata": spec.metadata,
            "indexes": spec.indexes,
        }
        staged = folder / f"{SPEC_FILE}.tmp"
        staged.write_text(json.dumps(data, indent=1))
        os.replace(staged, folder / SPEC_FILE)
        self._shards[name] = shard
        self._specs[name] = spec

    async def drop(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        self._specs.pop(name, None)
        self._written.discard(name)
        if shard is not None:
            await self._run(shard.close)
        shutil.rmtree(self.root / name, ignore_errors=True)

    def _config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        distance = qe.Distance.Cosine if spec.distance == "cosine" else qe.Distance.Dot
        quantization = (
            qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True)
            if self.quantization and spec.size > 1
            else None
        )
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=spec.size, distance=distance, on_disk=self.on_disk),
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m,
                ef_construct=self.hnsw_ef_construct,
                # Filtered searches over fewer points than this (in KB of vectors) are exact:
                # a small gallery beside millions of faces is answered by its tenant index.
                full_scan_threshold=self.indexing_threshold_kb,
                payload_m=self.hnsw_m,
            ),
            quantization_config=quantization,
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb),
        )

    async def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        if await self.spec(name) is None:
            raise FaceScoreError(
                Reason.INTERNAL, f"no collection {name} in {self.root}", grpc.StatusCode.INTERNAL
            )
        try:
            shard = await self._run(qe.EdgeShard.load, str(self.root / name / SHARD_DIR))
        except StorageInUse:
            raise
        self._shards[name] = shard
        return shard

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        """One engine call in a worker thread; engine trouble becomes a stable reason."""
        try:
            return await asyncio.to_thread(call, *args)
        except FaceScoreError:
            raise
        except Exception as error:  # qdrant-edge raises plain Exception with the engine's text
            text = str(error)
            if "WouldBlock" in text or "Resource temporarily unavailable" in text:
                raise StorageInUse(self.root, text) from error
            raise FaceScoreError(
                Reason.DEPENDENCY_UNAVAILABLE,
                f"embedded qdrant failed: {text}",
                grpc.StatusCode.UNAVAILABLE,
                metadata={"dependency": "qdrant"},
            ) from error

    # Points.

    async def upsert(self, name: str, points: Sequence[Point]) -> None:
        shard = await self._shard(name)
        batch = [qe.Point(p.id, list(p.vector or []), p.payload) for p in points]
        await self._run(shard.update, qe.UpdateOperation.upsert_points(batch))
        self._wrote(name)

    async def retrieve(
        self, name: str, ids: Sequence[str], *, with_vector: bool = False
    ) -> list[Point]:
        shard = await self._shard(name)
        records = await self._run(shard.retrieve, list(ids), True, with_vector)
        return [
            Point(_id(r.id), dict(r.payload or {}), _vector(r.vector) if with_vector else None)
            for r in records
        ]

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        shard = await self._shard(name)
        await self._run(shard.update, qe.UpdateOperation.delete_points(list(ids)))
        self._wrote(name)

    async def delete_where(self, name: str, where: Where) -> None:
        shard = await self._shard(name)
        selector = edge_filter(where)
        assert selector is not None, "delete_where needs a filter"
        await self._run(shard.update, qe.UpdateOperation.delete_points_by_filter(selector))
        self._wrote(name)

    async def count(self, name: str, where: Where | None = None) -> int:
        shard = await self._shard(name)
        return int(
            await self._run(shard.count, qe.CountRequest(exact=True, filter=edge_filter(where)))
        )

    async def scroll(
        self,
        name: str,
        where: Where | None,
        limit: int,
        offset: str | None,
        *,
        with_vector: bool = False,
    ) -> tuple[list[Point], str | None]:
        shard = await self._shard(name)
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=edge_filter(where),
            with_payload=True,
            with_vector=with_vector,
        )
        records, next_offset = await self._run(shard.scroll, request)
        points = [
            Point(_id(r.id), dict(r.payload or {}), _vector(r.vector) if with_vector else None)
            for r in records
        ]
        return points, (_id(next_offset) if next_offset is not None else None)

    async def query(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        where: Where,
        exclude: Exclude = None,
        payload: Sequence[str] = (),
    ) -> list[Scored]:
        shard = await self._shard(name)
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            filter=edge_filter(where, exclude),
            with_payload=qe.PayloadSelector.Include(list(payload)) if payload else False,
            params=self._params(),
        )
        found = await self._run(shard.query, request)
        return [Scored(_id(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def _params(self) -> qe.SearchParams:
        tuning = self.tuning
        quantization = (
            qe.QuantizationSearchParams(rescore=True, oversampling=tuning.oversampling)
            if tuning.oversampling
            else None
        )
        return qe.SearchParams(
            hnsw_ef=tuning.hnsw_ef, exact=tuning.exact, quantization=quantization
        )

    # Indexing.

    def _wrote(self, name: str) -> None:
        self._written.add(name)
        self._wake.set()
        if self._indexer is None or self._indexer.done():
            self._indexer = asyncio.get_running_loop().create_task(self._index_when_quiet())

    async def _index_when_quiet(self) -> None:
        """Build indexes once writes have paused for index_delay_s (a bulk enrollment is not
        re-indexed after every face)."""
        while self._written:
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.index_delay_s)
                continue  # more writes came: wait for quiet again
            for name in sorted(self._written):
                self._written.discard(name)
                with suppress(FaceScoreError):
                    await self.optimize(name)

    async def optimize(self, name: str) -> bool:
        """Build what the engine plans (HNSW over full segments, merges) in a worker thread;
        True when something was built. Searches and writes go on meanwhile."""
        shard = await self._shard(name)
        loop = asyncio.get_running_loop()
        self._optimizing = loop.run_in_executor(None, shard.optimize)
        try:
            built = bool(await asyncio.shield(self._optimizing))
        except Exception as error:
            log.warning("embedded index build failed", collection=name, detail=str(error))
            raise FaceScoreError(
                Reason.DEPENDENCY_UNAVAILABLE,
                f"embedded qdrant could not build its index: {error}",
                grpc.StatusCode.UNAVAILABLE,
                metadata={"dependency": "qdrant"},
            ) from error
        finally:
            self._optimizing = None
        if built:
            info = await self._run(shard.info)
            log.info(
                "embedded index built",
                collection=name,
                points=info.points_count,
                indexed=info.indexed_vectors_count,
                segments=info.segments_count,
            )
        return built

    async def settled(self) -> None:
        """Return once the background indexer has built what the writes so far called for."""
        while self._indexer is not None and not self._indexer.done():
            await asyncio.shield(self._indexer)

    async def indexed_vectors(self, name: str) -> int:
        shard = await self._shard(name)
        return int((await self._run(shard.info)).indexed_vectors_count)

    @property
    def optimizing(self) -> bool:
        return self._optimizing is not None and not self._optimizing.done()


@contextmanager
def held(root: Path) -> Iterator[list[str]]:
    """Open every shard under `root` (taking their WAL locks), flush them, and keep them held:
    while inside, no score service can open the storage, so its files can be copied or
    replaced whole. Raises StorageInUse when a running score service holds it. Yields the
    collection names."""
    shards: list[qe.EdgeShard] = []
    names = (
        sorted(p.name for p in root.iterdir() if (p / SPEC_FILE).is_file()) if root.is_dir() else []
    )
    try:
        for name in names:
            try:
                shard = qe.EdgeShard.load(str(root / name / SHARD_DIR))
            except Exception as error:
                if "WouldBlock" in str(error):
                    raise StorageInUse(root, str(error)) from error
                raise
            shards.append(shard)
            shard.flush()
        yield names
    finally:
        for shard in shards:
            shard.close()
