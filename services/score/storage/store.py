"""The gallery store: galleries, subjects and faces over one storage engine, with the
per-gallery write lock that keeps multi-step writes whole, and the write gate that a
snapshot closes to copy a state in which every write is whole."""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import structlog

from services.common.errors import FaceScoreError, Reason
from services.score.settings import ScoreSettings
from services.score.storage import layout, search
from services.score.storage.edge import EdgeEngine
from services.score.storage.engine import CollectionSpec, Engine, Point, Where
from services.score.storage.gate import Gate
from services.score.storage.layout import (
    GalleryRecord,
    Hit,
    ModelIdentity,
    SubjectRecord,
    gallery_point_id,
    subject_point_id,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")
PAGE = 256


def collection_mismatches(spec: CollectionSpec, identity: ModelIdentity) -> list[str]:
    """Why a faces collection does not fit the loaded model; [] when it does."""
    problems = []
    if spec.size != identity.dim:
        problems.append(f"dimension {spec.size}, the model gives {identity.dim}")
    if spec.distance != "cosine":
        problems.append(f"distance {spec.distance}, expected cosine")
    for key, value in identity.metadata().items():
        if key != "dim" and spec.metadata.get(key) != value:
            problems.append(f"{key} {spec.metadata.get(key)!r}, expected {value!r}")
    return problems


async def scroll_all(
    engine: Engine, collection: str, where: Where | None = None, *, with_vector: bool = False
) -> AsyncIterator[Point]:
    offset: str | None = None
    while True:
        points, offset = await engine.scroll(
            collection, where, PAGE, offset, with_vector=with_vector
        )
        for point in points:
            yield point
        if offset is None:
            return


@dataclass(frozen=True)
class Snapshot:
    """A copy of the embedded storage, and what it held when it was taken."""

    folder: Path
    collections: list[str]
    faces: int
    subjects: int
    galleries: int
    created_unix_ms: int


class GalleryStore:
    def __init__(self, settings: ScoreSettings, identity: ModelIdentity, engine: Engine) -> None:
        self.settings = settings
        self.identity = identity
        self.engine = engine
        self.collection = layout.faces_collection(settings.collection_prefix, identity)
        self.registry = layout.registry_collection(settings.collection_prefix)
        self._writers: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Every write takes it shared (inside its gallery lock, so that a writer waiting
        # for a gallery lock holds no gate); a snapshot takes it alone.
        self.writes = Gate()

    @property
    def mode(self) -> str:
        return self.engine.mode

    def writing(self, gallery: str) -> asyncio.Lock:
        """The lock that orders this process's multi-step writes to one gallery.

        Qdrant has no transactions: an enrollment writes a face and then its subject record,
        a delete removes faces and then records. Interleaved, an enrollment and a delete of
        the same subject or gallery could leave a face without its subject, a subject
        without faces, or faces in a deleted gallery. Holders: Enroll's writes, gallery
        create and delete, subject delete. (Replicas of score do not share it: see
        docs/scaling.md.)
        """
        lock = self._writers.get(gallery)
        if lock is None:
            lock = self._writers[gallery] = asyncio.Lock()
        return lock

    async def _whole(self, gallery: str, write: Coroutine[Any, Any, T]) -> T:
        """Run a multi-step write under the gallery's lock, to its end even when the caller
        is cancelled (a deadline, a client gone): cancelled between its steps, an enrollment
        would leave a face without its subject record, a delete a subject without faces."""

        async def locked() -> T:
            async with self.writing(gallery), self.writes.shared():
                return await write

        return await asyncio.shield(asyncio.ensure_future(locked()))

    # Lifecycle.

    async def open(self) -> None:
        """Create what is missing, refuse a collection made for another model."""
        if self.settings.force_init:
            await self._force_init()
        spec = await self.engine.spec(self.collection)
        if spec is None:
            await self.engine.create(
                self.collection,
                CollectionSpec(
                    self.identity.dim, "cosine", self.identity.metadata(), layout.FACE_INDEXES
                ),
            )
        elif problems := collection_mismatches(spec, self.identity):
            raise FaceScoreError(
                Reason.EMBEDDING_MODEL_MISMATCH,
                f"collection {self.collection} does not fit the loaded model "
                f"{self.identity.model_id}: {'; '.join(problems)}. Point the score service "
                "at another collection prefix or data dir, or re-enroll into a new collection.",
                grpc.StatusCode.FAILED_PRECONDITION,
                metadata={"collection": self.collection},
            )
        if await self.engine.spec(self.registry) is None:
            await self.engine.create(
                self.registry,
                CollectionSpec(layout.REGISTRY_DIM, "dot", {}, layout.REGISTRY_INDEXES),
            )
        # Open both now: embedded, this takes the shards' locks, so score owns its storage
        # from the start and an admin command opening it meanwhile is refused.
        faces = await self.engine.count(self.collection)
        log.info("storage open", mode=self.mode, collection=self.collection, faces=faces)
        await self.engine.count(self.registry)

    async def close(self) -> None:
        await self.engine.close()

    async def ping(self) -> None:
        await self.engine.ping()

    async def _force_init(self) -> None:
        """SCORE_FORCE_INIT: drop the faces collection, once its name is confirmed."""
        if self.settings.force_init_confirm != self.collection:
            found = self.settings.force_init_confirm
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT,
                f"SCORE_FORCE_INIT=true deletes every face in collection {self.collection}; "
                f"to confirm, set SCORE_FORCE_INIT_CONFIRM={self.collection} "
                f"(it is {'unset' if found is None else repr(found)}), or unset SCORE_FORCE_INIT",
                grpc.StatusCode.FAILED_PRECONDITION,
                metadata={"setting": "SCORE_FORCE_INIT_CONFIRM", "collection": self.collection},
            )
        if await self.engine.spec(self.collection) is not None:
            faces = await self.engine.count(self.collection)
            await self.engine.drop(self.collection)
            log.warning(
                "force_init: faces collection deleted; unset SCORE_FORCE_INIT",
                collection=self.collection,
                deleted_faces=faces,
            )

    # Galleries.

    async def create_gallery(self, name: str) -> GalleryRecord:
        async with self.writing(name), self.writes.shared():
            if await self._gallery(name) is not None:
                raise FaceScoreError(
                    Reason.GALLERY_EXISTS,
                    f"gallery {name!r} already exists",
                    grpc.StatusCode.ALREADY_EXISTS,
                    metadata={"gallery": name},
                )
            record = GalleryRecord(name, layout.now_ms())
            await self.engine.upsert(
                self.registry,
                [Point(gallery_point_id(name), layout.gallery_payload(record), [0.0])],
            )
            return record

    async def _gallery(self, name: str) -> GalleryRecord | None:
        points = await self.engine.retrieve(self.registry, [gallery_point_id(name)])
        return layout.gallery_record(points[0].payload) if points else None

    async def require_gallery(self, name: str) -> GalleryRecord:
        record = await self._gallery(name)
        if record is None:
            raise FaceScoreError(
                Reason.GALLERY_NOT_FOUND,
                f"gallery {name!r} does not exist",
                grpc.StatusCode.NOT_FOUND,
                metadata={"gallery": name},
            )
        return record

    async def list_galleries(self) -> list[GalleryRecord]:
        records = [
            layout.gallery_record(p.payload)
            async for p in scroll_all(self.engine, self.registry, {"kind": "gallery"})
        ]
        return sorted(records, key=lambda r: r.name)

    async def delete_gallery(self, name: str) -> int:
        return await self._whole(name, self._delete_gallery(name))

    async def _delete_gallery(self, name: str) -> int:
        await self.require_gallery(name)
        deleted = await self.count_faces(gallery=name)
        # Faces first, the gallery record last: an interrupted delete can simply be retried.
        await self.engine.delete_where(self.collection, {"gallery": name})
        await self.engine.delete_where(self.registry, {"kind": "subject", "gallery": name})
        await self.engine.delete(self.registry, [gallery_point_id(name)])
        return deleted

    # Subjects.

    async def subject(self, gallery: str, subject_id: str) -> SubjectRecord | None:
        points = await self.engine.retrieve(self.registry, [subject_point_id(gallery, subject_id)])
        return layout.subject_record(points[0].payload) if points else None

    async def require_subject(self, gallery: str, subject_id: str) -> SubjectRecord:
        record = await self.subject(gallery, subject_id)
        if record is None:
            raise FaceScoreError(
                Reason.SUBJECT_NOT_FOUND,
                f"subject {subject_id!r} is not enrolled in gallery {gallery!r}",
                grpc.StatusCode.NOT_FOUND,
                metadata={"gallery": gallery, "subject_id": subject_id},
            )
        return record

    async def save_subject(self, gallery: str, subject_id: str, metadata_json: str) -> None:
        """Create the subject record, or update its metadata when new metadata is given."""
        existing = await self.subject(gallery, subject_id)
        if existing is not None and (not metadata_json or metadata_json == existing.metadata_json):
            return
        record = SubjectRecord(
            gallery,
            subject_id,
            metadata_json or (existing.metadata_json if existing else ""),
            existing.created_unix_ms if existing else layout.now_ms(),
        )
        await self.write_subjects([record])

    async def write_subjects(self, records: list[SubjectRecord]) -> None:
        await self.engine.upsert(
            self.registry,
            [
                Point(subject_point_id(r.gallery, r.subject_id), layout.subject_payload(r), [0.0])
                for r in records
            ],
        )

    async def enroll(
        self,
        gallery: str,
        subject_id: str,
        point_id: str,
        vector: list[float],
        payload: dict[str, Any],
        metadata_json: str,
    ) -> bool:
        """Store one face and its subject record together; True when the face is new.

        Under the gallery's write lock, so that a delete of the subject or the gallery
        cannot land between the two writes; the gallery is checked again under it (it may
        have been deleted while the photo was analyzed).
        """

        async def write() -> bool:
            await self.require_gallery(gallery)
            created = not await self.face_exists(point_id)
            await self.add_face(point_id, vector, payload)
            try:
                await self.save_subject(gallery, subject_id, metadata_json)
            except FaceScoreError:
                if created:  # no face may outlive a failed enrollment
                    await self.engine.delete(self.collection, [point_id])
                raise
            return created

        return await self._whole(gallery, write())

    async def list_subjects(
        self, gallery: str, page_size: int, page_token: str | None
    ) -> tuple[list[SubjectRecord], str | None]:
        points, next_offset = await self.engine.scroll(
            self.registry, {"kind": "subject", "gallery": gallery}, page_size, page_token or None
        )
        return [layout.subject_record(p.payload) for p in points], next_offset

    async def subject_face_ids(self, gallery: str, subject_id: str) -> list[str]:
        where = {"gallery": gallery, "subject_id": subject_id}
        return [p.id async for p in scroll_all(self.engine, self.collection, where)]

    async def delete_subject(self, gallery: str, subject_id: str) -> int:
        return await self._whole(gallery, self._delete_subject(gallery, subject_id))

    async def _delete_subject(self, gallery: str, subject_id: str) -> int:
        await self.require_subject(gallery, subject_id)
        deleted = await self.count_faces(gallery=gallery, subject_id=subject_id)
        await self.engine.delete_where(
            self.collection, {"gallery": gallery, "subject_id": subject_id}
        )
        await self.engine.delete(self.registry, [subject_point_id(gallery, subject_id)])
        return deleted

    # Faces.

    async def count_faces(self, **fields: str) -> int:
        return await self.engine.count(self.collection, fields)

    async def face_exists(self, point_id: str) -> bool:
        return bool(await self.engine.retrieve(self.collection, [point_id]))

    async def add_face(self, point_id: str, vector: list[float], payload: dict[str, Any]) -> None:
        await self.engine.upsert(self.collection, [Point(point_id, payload, vector)])

    async def delete_face(self, gallery: str, face: str) -> None:
        try:
            point_id = str(uuid.UUID(face))
        except ValueError:
            point_id = ""
        points = await self.engine.retrieve(self.collection, [point_id]) if point_id else []
        if not points or points[0].payload.get("gallery") != gallery:
            raise FaceScoreError(
                Reason.FACE_NOT_FOUND,
                f"face {face!r} is not in gallery {gallery!r}",
                grpc.StatusCode.NOT_FOUND,
                metadata={"gallery": gallery, "face_id": face},
            )
        async with self.writes.shared():
            await self.engine.delete(self.collection, [point_id])

    async def search(self, gallery: str, vector: list[float], top_k: int) -> list[Hit]:
        return await search.best_per_subject(self.engine, self.collection, gallery, vector, top_k)

    async def best_face_of(self, gallery: str, subject_id: str, vector: list[float]) -> Hit | None:
        return await search.best_face_of(self.engine, self.collection, gallery, subject_id, vector)

    # Snapshots.

    async def snapshot(self, folder: Path) -> Snapshot:
        """Copy the embedded storage to the new `folder` while score runs, consistent: writes
        are held back (those in flight finish first, every multi-step write is whole), the
        shards are flushed and copied, then writes go on. Reads go on throughout."""
        engine = self.engine
        if not isinstance(engine, EdgeEngine):
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT,
                "score stores galleries on a Qdrant server: back it up with Qdrant's "
                "snapshots (`facescore admin backup` with SCORE_QDRANT_URL set)",
                grpc.StatusCode.FAILED_PRECONDITION,
                metadata={"storage": "server"},
            )
        counted: dict[str, int] = {}

        async def count() -> None:
            counted["faces"] = await engine.count(self.collection)
            counted["subjects"] = await engine.count(self.registry, {"kind": "subject"})
            counted["galleries"] = await engine.count(self.registry, {"kind": "gallery"})

        names = await engine.snapshot(folder, self.writes.exclusive, count)
        log.info("snapshot taken", folder=str(folder), **counted)
        return Snapshot(folder, names, created_unix_ms=int(time.time() * 1000), **counted)
