"""Embedded storage: Qdrant's own engine in-process (qdrant-edge-py), one shard per collection.

DATA_DIR/edge/<collection>/ holds the shard (segments and a write-ahead log) and
collection.json (the vector size, distance, indexes and facescore's metadata, written last:
a folder without it is an unfinished create). Only one process may open a shard: its WAL is
locked, and a second opener gets WouldBlock, which becomes `StorageInUse`.

Engine calls run in worker threads. New points land in an appendable segment and are
searchable at once (exactly); after writes settle, the HNSW index is built in a child process
on a copy and swapped in (EdgeEngine.optimize says why), while calls go on.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import grpc
import numpy as np
import qdrant_edge as qe
import structlog

from services.common.errors import FaceScoreError, Reason
from services.score.storage.engine import (
    CollectionSpec,
    Exclude,
    IndexOptions,
    Point,
    Scored,
    SearchTuning,
    Where,
)
from services.score.storage.gate import Gate

SPEC_FILE = "collection.json"
SHARD_DIR = "shard"
WAL_DIR = "wal"  # inside a shard; locked (flock) by the process that opened the shard
NEXT_DIR = "shard.next"  # a rebuilt shard, complete, about to replace SHARD_DIR
OLD_DIR = "shard.old"  # the replaced shard, deleted once the swap is done
BUILD_DIR = "build"  # a rebuild's export and its child's shard
POINTS_FILE = "points.jsonl"
VECTORS_FILE = "vectors.f32"  # float32 rows, one per line of POINTS_FILE
OPTIONS_FILE = "options.json"
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


def _quantization(
    index: IndexOptions, spec: CollectionSpec
) -> qe.ScalarQuantizationConfig | qe.BinaryQuantizationConfig | None:
    kind = index.quantization_for(spec.size)
    if kind == "none":
        return None
    if kind == "int8":
        return qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True)
    return qe.BinaryQuantizationConfig(
        always_ram=True, encoding=qe.BinaryQuantizationEncoding.OneBit
    )


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
        index: IndexOptions | None = None,
        indexing_threshold_kb: int = 20_000,
        index_delay_s: float = 2.0,
    ) -> None:
        self.root = root
        self.tuning = tuning or SearchTuning()
        self.index = index or IndexOptions()
        self.indexing_threshold_kb = indexing_threshold_kb
        self.index_delay_s = index_delay_s
        self._shards: dict[str, qe.EdgeShard] = {}
        self._specs: dict[str, CollectionSpec] = {}
        self._written: set[str] = set()
        self._wake = asyncio.Event()
        self._indexer: asyncio.Task[None] | None = None
        self._optimizing: asyncio.Future[bool] | None = None
        self._gates: dict[str, Gate] = {}
        self._rebuilding = asyncio.Lock()
        self._delta: dict[str, list[tuple[str, Any]]] = {}  # writes during a rebuild

    # Lifecycle.

    async def close(self) -> None:
        if self._indexer is not None:
            self._indexer.cancel()
            with suppress(asyncio.CancelledError):
                await self._indexer
        if self._optimizing is not None:  # let a rebuild finish its swap (or fail)
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
        shard = await self._run(qe.EdgeShard.create, str(folder / SHARD_DIR), self.config(spec))
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

    def config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        distance = qe.Distance.Cosine if spec.distance == "cosine" else qe.Distance.Dot
        index = self.index
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=spec.size, distance=distance, on_disk=index.on_disk),
            hnsw_config=qe.HnswIndexConfig(
                m=index.hnsw_m,
                ef_construct=index.hnsw_ef_construct,
                # Filtered searches over fewer points than this (in KB of vectors) scan: a
                # small gallery beside millions of faces is answered by its tenant index.
                full_scan_threshold=index.full_scan_threshold_kb(self.indexing_threshold_kb),
                payload_m=index.hnsw_m,
            ),
            quantization_config=_quantization(index, spec),
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
        folder = self.root / name
        if _mid_swap(folder):
            recover(folder)
        shard = await self._run(load_shard, self.root, folder / SHARD_DIR)
        self._shards[name] = shard
        return shard

    async def _run(self, call: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """One engine call in a worker thread (`inline`: on the event loop, for index
        lookups of microseconds, less than the trip to a thread); engine trouble becomes a
        stable reason."""
        try:
            return call(*args) if inline else await asyncio.to_thread(call, *args)
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

    # Points. Every shard call goes through _use: a swap to a rebuilt shard waits for the
    # calls in flight and holds new ones back for its few steps.

    async def _use(self, name: str, method: str, *args: Any, inline: bool = False) -> Any:
        gate = self._gates.setdefault(name, Gate())
        async with gate.shared():
            shard = await self._shard(name)
            return await self._run(getattr(shard, method), *args, inline=inline)

    async def _write(self, name: str, op: tuple[str, Any]) -> None:
        gate = self._gates.setdefault(name, Gate())
        async with gate.shared():
            shard = await self._shard(name)
            await self._run(shard.update, _operation(op))
            if name in self._delta:  # a rebuild is under way: it replays this write
                self._delta[name].append(op)
        self._wrote(name)

    async def upsert(self, name: str, points: Sequence[Point]) -> None:
        batch = [(p.id, list(p.vector or []), p.payload) for p in points]
        await self._write(name, ("upsert", batch))

    async def retrieve(
        self, name: str, ids: Sequence[str], *, with_vector: bool = False
    ) -> list[Point]:
        records = await self._use(name, "retrieve", list(ids), True, with_vector)
        return [
            Point(_id(r.id), dict(r.payload or {}), _vector(r.vector) if with_vector else None)
            for r in records
        ]

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        await self._write(name, ("delete", list(ids)))

    async def delete_where(self, name: str, where: Where) -> None:
        assert where, "delete_where needs a filter"
        await self._write(name, ("delete_where", dict(where)))

    async def count(self, name: str, where: Where | None = None, *, estimate: bool = False) -> int:
        request = qe.CountRequest(exact=not estimate, filter=edge_filter(where))
        return int(await self._use(name, "count", request, inline=estimate))

    async def scroll(
        self,
        name: str,
        where: Where | None,
        limit: int,
        offset: str | None,
        *,
        with_vector: bool = False,
    ) -> tuple[list[Point], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=edge_filter(where),
            with_payload=True,
            with_vector=with_vector,
        )
        records, next_offset = await self._use(name, "scroll", request)
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
        where: Where | None,
        exclude: Exclude = None,
        payload: Sequence[str] = (),
    ) -> list[Scored]:
        # The whole payload, then the fields asked for: a face's payload is a few short
        # fields, and qdrant-edge 0.9's field selector (PayloadSelector.Include) cost more
        # (at 100,000 faces: 12.3 against 3.9 ms in one probe, 7.0 against 6.1 in another).
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            filter=edge_filter(where, exclude),
            with_payload=bool(payload),
            params=self._params(),
        )
        found = await self._use(name, "query", request)
        return [
            Scored(
                _id(p.id),
                float(p.score),
                {k: v for k, v in (p.payload or {}).items() if k in payload},
            )
            for p in found
        ]

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

    async def unindexed(self, name: str) -> int:
        info = await self._use(name, "info")
        return int(info.points_count - info.indexed_vectors_count)

    async def optimize(self, name: str) -> bool:
        """Rebuild the collection's shard with its HNSW index in another process, then swap
        it in; True when a new shard was built.

        qdrant-edge's optimize() holds the GIL for the whole build (measured: seconds per
        10,000 faces, minutes at a million), so run in this process, even in a thread, it
        would stop every call. Instead the points are exported, a child process writes them
        into a new shard and optimizes it, the writes that came meanwhile are replayed into
        it, and it replaces the shard in a few steps during which calls wait.
        """
        async with self._rebuilding:  # one rebuild at a time
            return await self._rebuild(name)

    async def _rebuild(self, name: str) -> bool:
        spec = await self.spec(name)
        threshold = self.indexing_threshold_kb * 1024 // (4 * spec.size) if spec else 0
        if spec is None or await self.unindexed(name) < max(1, threshold):
            return False
        folder = self.root / name
        build = folder / BUILD_DIR
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        self._delta[name] = []
        loop = asyncio.get_running_loop()
        self._optimizing = loop.create_future()
        try:
            await self._export(name, build)
            await self._build(spec, build)
            await self._swap(name, build / SHARD_DIR)
        except BaseException as error:
            log.warning("embedded index build failed", collection=name, detail=str(error))
            raise
        finally:
            self._delta.pop(name, None)
            shutil.rmtree(build, ignore_errors=True)
            done, self._optimizing = self._optimizing, None
            done.set_result(True)
        info = await self._use(name, "info")
        log.info(
            "embedded index built",
            collection=name,
            points=info.points_count,
            indexed=info.indexed_vectors_count,
            segments=info.segments_count,
        )
        return True

    async def _export(self, name: str, build: Path) -> None:
        """Every point, in pages (calls go on between them), to points.jsonl + vectors.f32,
        written page by page: a million faces held as Python floats would take 16 GB."""
        with (build / POINTS_FILE).open("w") as out, (build / VECTORS_FILE).open("wb") as raw:
            offset: str | None = None
            while True:
                points, offset = await self.scroll(name, None, 2048, offset, with_vector=True)
                for point in points:
                    out.write(json.dumps([point.id, point.payload]) + "\n")
                if points:
                    raw.write(np.asarray([p.vector for p in points], np.float32).tobytes())
                if offset is None:
                    break

    async def _build(self, spec: CollectionSpec, build: Path) -> None:
        options = {
            "size": spec.size,
            "distance": spec.distance,
            "indexes": spec.indexes,
            "index": asdict(self.index),
            "indexing_threshold_kb": self.indexing_threshold_kb,
        }
        (build / OPTIONS_FILE).write_text(json.dumps(options))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.score.storage.build", str(build),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, errors = await child.communicate()
        except BaseException:  # score is stopping: the build is abandoned, not left running
            child.kill()
            await child.wait()
            raise
        if child.returncode != 0:
            raise FaceScoreError(
                Reason.DEPENDENCY_UNAVAILABLE,
                f"building the embedded index failed: {errors.decode(errors='replace')[-500:]}",
                grpc.StatusCode.UNAVAILABLE,
                metadata={"dependency": "qdrant"},
            )

    async def _swap(self, name: str, built: Path) -> None:
        """Replace the shard with the one built, after replaying the writes made meanwhile.
        Crash-safe: recover() finishes or undoes a swap found half-done at start."""
        folder = self.root / name
        gate = self._gates.setdefault(name, Gate())
        async with gate.exclusive():
            fresh = await self._run(qe.EdgeShard.load, str(built))
            for op in self._delta.pop(name, []):
                await self._run(fresh.update, _operation(op))
            await self._run(self._close_shard, fresh)
            os.replace(built, folder / NEXT_DIR)  # complete: recover() would finish from here
            old = self._shards.pop(name, None)
            if old is not None:
                await self._run(self._close_shard, old)
            os.rename(folder / SHARD_DIR, folder / OLD_DIR)
            os.rename(folder / NEXT_DIR, folder / SHARD_DIR)
            self._shards[name] = await self._run(qe.EdgeShard.load, str(folder / SHARD_DIR))
        shutil.rmtree(folder / OLD_DIR, ignore_errors=True)

    async def snapshot(
        self,
        target: Path,
        paused: Callable[[], AbstractAsyncContextManager[None]],
        while_paused: Callable[[], Awaitable[None]],
    ) -> list[str]:
        """Copy every collection (its spec and shard) to the new folder `target` while calls
        go on; returns the collections copied.

        Consistent: an index build in progress finishes first and none starts meanwhile (a
        swap changes the files under the copy); then, inside `paused` (the caller's writes
        held back), every shard is flushed and copied, and `while_paused` runs (to count
        what the copy holds). The copy is written under a temporary name and renamed."""
        if target.exists():
            raise FileExistsError(f"{target} exists; a snapshot goes to a new folder")
        staging = target.with_name(f".{target.name}.partial")
        try:
            async with self._rebuilding, paused():
                names = await self.collections()
                await self.flush()
                await asyncio.to_thread(copy_collections, self.root, staging, names)
                await while_paused()
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return names

    async def settled(self) -> None:
        """Return once the background indexer has built what the writes so far called for."""
        while self._indexer is not None and not self._indexer.done():
            await asyncio.shield(self._indexer)

    async def indexed_vectors(self, name: str) -> int:
        return int((await self._use(name, "info")).indexed_vectors_count)

    @property
    def optimizing(self) -> bool:
        return self._optimizing is not None and not self._optimizing.done()


def recover(folder: Path) -> None:
    """Finish or undo a shard swap that a crash interrupted (see EdgeEngine._swap)."""
    shard, nxt, old = folder / SHARD_DIR, folder / NEXT_DIR, folder / OLD_DIR
    if nxt.exists() and not shard.exists():
        os.rename(nxt, shard)  # the built shard was complete, the old one moved away
    elif old.exists() and not shard.exists():
        os.rename(old, shard)
    shutil.rmtree(nxt, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(folder / BUILD_DIR, ignore_errors=True)


def copy_collections(root: Path, target: Path, names: Sequence[str]) -> None:
    """The specs and shards of `names`, copied to `target`."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    leftovers = {BUILD_DIR, NEXT_DIR, OLD_DIR, f"{SPEC_FILE}.tmp"}
    for name in names:
        folder = root / name

        def rebuilds(where: str, files: list[str], folder: Path = folder) -> list[str]:
            # What an index build leaves beside the shard is not part of the collection.
            return [f for f in files if Path(where) == folder and f in leftovers]

        shutil.copytree(folder, target / name, ignore=rebuilds)


def _operation(op: tuple[str, Any]) -> qe.UpdateOperation:
    kind, args = op
    if kind == "upsert":
        return qe.UpdateOperation.upsert_points([qe.Point(i, v, p) for i, v, p in args])
    if kind == "delete":
        return qe.UpdateOperation.delete_points(args)
    selector = edge_filter(args)
    assert selector is not None
    return qe.UpdateOperation.delete_points_by_filter(selector)


def wal_held(shard: Path) -> bool:
    """Whether another process holds the shard: its WAL folder's lock (flock), probed without
    opening the shard. qdrant-edge's load() touches the segments' files before it finds the
    WAL locked, and that breaks the holder's next flush (seen: "Tracker journal ... is
    shorter than expected"), so nothing may load a shard that another process holds."""
    try:
        fd = os.open(shard / WAL_DIR, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def load_shard(root: Path, shard: Path) -> qe.EdgeShard:
    """Open a shard that no other process holds; StorageInUse when one does."""
    if wal_held(shard):
        raise StorageInUse(root, f"{shard / WAL_DIR} is locked")
    try:
        return qe.EdgeShard.load(str(shard))
    except Exception as error:
        if "WouldBlock" in str(error):  # taken between the probe and the load
            raise StorageInUse(root, str(error)) from error
        raise


def _mid_swap(folder: Path) -> bool:
    return not (folder / SHARD_DIR).exists() or (folder / OLD_DIR).exists()


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
    mid_swap = {name: _mid_swap(root / name) for name in names}
    for name in names:  # a running score found before anything is opened or recovered
        if not mid_swap[name] and wal_held(root / name / SHARD_DIR):
            raise StorageInUse(root, f"{root / name / SHARD_DIR / WAL_DIR} is locked")
    try:
        for name in names:
            if mid_swap[name]:
                recover(root / name)  # a rebuild's swap cut short
            shard = load_shard(root, root / name / SHARD_DIR)
            shards.append(shard)
            shard.flush()
        yield names
    finally:
        for shard in shards:
            shard.close()
