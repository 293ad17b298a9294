"""Faces in Qdrant: one collection per embedding model, galleries as tenants inside it.

Besides the faces collection, a small registry collection holds one record per gallery and
per subject (name, metadata, created time); face counts always come from the faces themselves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import httpx
import structlog
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import FaceScoreError, Reason
from services.score.settings import ScoreSettings

# Namespace of the deterministic point ids (UUIDv5): a retried write lands on the same point.
ID_NAMESPACE = uuid.UUID("6f1c1f6e-2b0e-5d2c-9a39-7a0f3c4b8e11")
_SEP = "\x1f"
SEARCH_OVERFETCH = 4  # faces fetched per subject asked for before grouping (see search)
log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    sha256: str
    dim: int

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.sha256}"


@dataclass(frozen=True)
class Hit:
    subject_id: str
    similarity: float
    face_id: str


@dataclass(frozen=True)
class GalleryRecord:
    name: str
    created_unix_ms: int


@dataclass(frozen=True)
class SubjectRecord:
    gallery: str
    subject_id: str
    metadata_json: str
    created_unix_ms: int


def face_id(gallery: str, subject_id: str, image_sha256: str, face_index: int) -> str:
    return str(
        uuid.uuid5(ID_NAMESPACE, _SEP.join((gallery, subject_id, image_sha256, str(face_index))))
    )


def gallery_point_id(gallery: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, _SEP.join(("gallery", gallery))))


def subject_point_id(gallery: str, subject_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, _SEP.join(("subject", gallery, subject_id))))


def match_filter(**fields: str) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key=k, match=models.MatchValue(value=v))
            for k, v in fields.items()
        ]
    )


def qdrant_options(settings: ScoreSettings) -> dict[str, Any]:
    """qdrant-client's arguments: a server's URL, key and timeout, or the embedded storage."""
    if settings.qdrant_url:
        key = settings.qdrant_api_key
        return {
            "url": settings.qdrant_url,
            "api_key": key.get_secret_value() if key else None,
            "timeout": int(max(1, settings.qdrant_timeout_s)),
        }
    return {"path": str(settings.data_dir / "qdrant")}


def now_ms() -> int:
    return int(time.time() * 1000)


class GalleryStore:
    def __init__(self, settings: ScoreSettings, identity: ModelIdentity) -> None:
        self.settings = settings
        self.identity = identity
        self.collection = f"{settings.collection_prefix}_{identity.name}_{identity.sha256[:12]}"
        self.registry = f"{settings.collection_prefix}_registry"
        self._client: AsyncQdrantClient | None = None
        self._writers: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

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
            async with self.writing(gallery):
                return await write

        return await asyncio.shield(asyncio.ensure_future(locked()))

    @property
    def mode(self) -> str:
        return "server" if self.settings.qdrant_url else "embedded"

    @property
    def client(self) -> AsyncQdrantClient:
        if self._client is None:
            raise RuntimeError("gallery store is not open")
        return self._client

    async def open(self) -> None:
        """Connect, create what is missing, refuse a collection made for another model."""
        if not self.settings.qdrant_url:
            (self.settings.data_dir / "qdrant").mkdir(parents=True, exist_ok=True)
        self._client = AsyncQdrantClient(**qdrant_options(self.settings))
        async with self._qdrant():
            await self._ensure_faces_collection()
            await self._ensure_registry()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @asynccontextmanager
    async def _qdrant(self) -> AsyncIterator[None]:
        """Qdrant trouble becomes dependency_unavailable; our own errors pass through."""
        try:
            yield
        except FaceScoreError:
            raise
        except (
            ResponseHandlingException,
            UnexpectedResponse,
            httpx.HTTPError,
            grpc.RpcError,
            OSError,
            TimeoutError,
        ) as error:
            raise FaceScoreError(
                Reason.DEPENDENCY_UNAVAILABLE,
                f"qdrant is unavailable: {error}",
                grpc.StatusCode.UNAVAILABLE,
                metadata={"dependency": "qdrant"},
            ) from error

    async def _create_indexes(self, collection: str, fields: dict[str, bool]) -> None:
        with warnings.catch_warnings():
            # Embedded Qdrant has no payload indexes and says so; the server uses them.
            warnings.simplefilter("ignore", UserWarning)
            for field, tenant in fields.items():
                await self.client.create_payload_index(
                    collection,
                    field,
                    models.KeywordIndexParams(
                        type=models.KeywordIndexType.KEYWORD, is_tenant=tenant or None
                    ),
                )

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
        if await self.client.collection_exists(self.collection):
            faces = (await self.client.count(self.collection, exact=True)).count
            await self.client.delete_collection(self.collection)
            log.warning(
                "force_init: faces collection deleted; unset SCORE_FORCE_INIT",
                collection=self.collection,
                deleted_faces=faces,
            )

    async def _ensure_faces_collection(self) -> None:
        client = self.client
        expected = {"model_name": self.identity.name, "model_sha256": self.identity.sha256}
        if self.settings.force_init:
            await self._force_init()
        if await client.collection_exists(self.collection):
            info = await client.get_collection(self.collection)
            vectors = info.config.params.vectors
            found: dict[str, Any] = dict(info.config.metadata or {})
            problems = []
            if not isinstance(vectors, models.VectorParams):
                problems.append("named vectors instead of one unnamed vector")
            else:
                if vectors.size != self.identity.dim:
                    problems.append(
                        f"dimension {vectors.size}, the model gives {self.identity.dim}"
                    )
                if vectors.distance != models.Distance.COSINE:
                    problems.append(f"distance {vectors.distance}, expected Cosine")
            for key, value in expected.items():
                if found.get(key) != value:
                    problems.append(f"{key} {found.get(key)!r}, expected {value!r}")
            if problems:
                raise FaceScoreError(
                    Reason.EMBEDDING_MODEL_MISMATCH,
                    f"collection {self.collection} does not fit the loaded model "
                    f"{self.identity.model_id}: {'; '.join(problems)}. Point the score service "
                    "at another collection prefix or data dir, or re-enroll into a new collection.",
                    grpc.StatusCode.FAILED_PRECONDITION,
                    metadata={"collection": self.collection},
                )
            return
        await client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(
                size=self.identity.dim,
                distance=models.Distance.COSINE,
                on_disk=self.settings.on_disk,
            ),
            hnsw_config=models.HnswConfigDiff(
                m=self.settings.hnsw_m,
                ef_construct=self.settings.hnsw_ef_construct,
                on_disk=self.settings.on_disk,
            ),
            on_disk_payload=self.settings.on_disk,
            metadata={**expected, "dim": self.identity.dim},
        )
        await self._create_indexes(self.collection, {"gallery": True, "subject_id": False})

    async def _ensure_registry(self) -> None:
        if await self.client.collection_exists(self.registry):
            return
        # Records only; the one-dimensional vector is a placeholder Qdrant requires.
        await self.client.create_collection(
            self.registry,
            vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
        )
        await self._create_indexes(self.registry, {"kind": False, "gallery": False})

    async def ping(self) -> None:
        async with self._qdrant():
            await self.client.collection_exists(self.collection)

    # Galleries.

    async def create_gallery(self, name: str) -> GalleryRecord:
        async with self.writing(name), self._qdrant():
            if await self._gallery(name) is not None:
                raise FaceScoreError(
                    Reason.GALLERY_EXISTS,
                    f"gallery {name!r} already exists",
                    grpc.StatusCode.ALREADY_EXISTS,
                    metadata={"gallery": name},
                )
            record = GalleryRecord(name, now_ms())
            await self.client.upsert(
                self.registry,
                [
                    models.PointStruct(
                        id=gallery_point_id(name),
                        vector=[0.0],
                        payload={
                            "kind": "gallery",
                            "gallery": name,
                            "created": record.created_unix_ms,
                        },
                    )
                ],
                wait=True,
            )
            return record

    async def _gallery(self, name: str) -> GalleryRecord | None:
        points = await self.client.retrieve(
            self.registry, [gallery_point_id(name)], with_payload=True
        )
        if not points or points[0].payload is None:
            return None
        return GalleryRecord(name, int(points[0].payload.get("created", 0)))

    async def require_gallery(self, name: str) -> GalleryRecord:
        async with self._qdrant():
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
        async with self._qdrant():
            records = [
                GalleryRecord(str(p.payload["gallery"]), int(p.payload.get("created", 0)))
                async for p in self._scroll(self.registry, match_filter(kind="gallery"))
                if p.payload is not None
            ]
        return sorted(records, key=lambda r: r.name)

    async def delete_gallery(self, name: str) -> int:
        return await self._whole(name, self._delete_gallery(name))

    async def _delete_gallery(self, name: str) -> int:
        await self.require_gallery(name)
        async with self._qdrant():
            deleted = await self.count_faces(gallery=name)
            # Faces first, the gallery record last: an interrupted delete can simply be retried.
            await self.client.delete(self.collection, match_filter(gallery=name), wait=True)
            await self.client.delete(
                self.registry, match_filter(kind="subject", gallery=name), wait=True
            )
            await self.client.delete(
                self.registry, models.PointIdsList(points=[gallery_point_id(name)]), wait=True
            )
        return deleted

    # Subjects.

    async def subject(self, gallery: str, subject_id: str) -> SubjectRecord | None:
        async with self._qdrant():
            points = await self.client.retrieve(
                self.registry, [subject_point_id(gallery, subject_id)], with_payload=True
            )
        if not points or points[0].payload is None:
            return None
        return self._subject_record(points[0].payload)

    @staticmethod
    def _subject_record(payload: dict[str, Any]) -> SubjectRecord:
        return SubjectRecord(
            gallery=str(payload["gallery"]),
            subject_id=str(payload["subject_id"]),
            metadata_json=str(payload.get("metadata_json", "")),
            created_unix_ms=int(payload.get("created", 0)),
        )

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
        payload = {
            "kind": "subject",
            "gallery": gallery,
            "subject_id": subject_id,
            "metadata_json": metadata_json or (existing.metadata_json if existing else ""),
            "created": existing.created_unix_ms if existing else now_ms(),
        }
        async with self._qdrant():
            await self.client.upsert(
                self.registry,
                [
                    models.PointStruct(
                        id=subject_point_id(gallery, subject_id), vector=[0.0], payload=payload
                    )
                ],
                wait=True,
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
                    await self.delete_face(gallery, point_id)
                raise
            return created

        return await self._whole(gallery, write())

    async def list_subjects(
        self, gallery: str, page_size: int, page_token: str | None
    ) -> tuple[list[SubjectRecord], str | None]:
        async with self._qdrant():
            points, next_offset = await self.client.scroll(
                self.registry,
                scroll_filter=match_filter(kind="subject", gallery=gallery),
                limit=page_size,
                offset=page_token or None,
                with_payload=True,
            )
        records = [self._subject_record(p.payload) for p in points if p.payload is not None]
        return records, (str(next_offset) if next_offset is not None else None)

    async def subject_face_ids(self, gallery: str, subject_id: str) -> list[str]:
        async with self._qdrant():
            return [
                str(p.id)
                async for p in self._scroll(
                    self.collection, match_filter(gallery=gallery, subject_id=subject_id)
                )
            ]

    async def delete_subject(self, gallery: str, subject_id: str) -> int:
        return await self._whole(gallery, self._delete_subject(gallery, subject_id))

    async def _delete_subject(self, gallery: str, subject_id: str) -> int:
        await self.require_subject(gallery, subject_id)
        async with self._qdrant():
            deleted = await self.count_faces(gallery=gallery, subject_id=subject_id)
            await self.client.delete(
                self.collection, match_filter(gallery=gallery, subject_id=subject_id), wait=True
            )
            await self.client.delete(
                self.registry,
                models.PointIdsList(points=[subject_point_id(gallery, subject_id)]),
                wait=True,
            )
        return deleted

    # Faces.

    async def count_faces(self, **fields: str) -> int:
        async with self._qdrant():
            result = await self.client.count(
                self.collection, count_filter=match_filter(**fields), exact=True
            )
        return int(result.count)

    async def face_exists(self, point_id: str) -> bool:
        async with self._qdrant():
            return bool(await self.client.retrieve(self.collection, [point_id], with_payload=False))

    async def add_face(self, point_id: str, vector: list[float], payload: dict[str, Any]) -> None:
        async with self._qdrant():
            await self.client.upsert(
                self.collection,
                [models.PointStruct(id=point_id, vector=vector, payload=payload)],
                wait=True,
            )

    async def delete_face(self, gallery: str, face: str) -> None:
        try:
            point_id = str(uuid.UUID(face))
        except ValueError:
            point_id = ""
        async with self._qdrant():
            points = (
                await self.client.retrieve(self.collection, [point_id], with_payload=True)
                if point_id
                else []
            )
            if not points or (points[0].payload or {}).get("gallery") != gallery:
                raise FaceScoreError(
                    Reason.FACE_NOT_FOUND,
                    f"face {face!r} is not in gallery {gallery!r}",
                    grpc.StatusCode.NOT_FOUND,
                    metadata={"gallery": gallery, "face_id": face},
                )
            await self.client.delete(
                self.collection, models.PointIdsList(points=[point_id]), wait=True
            )

    async def search(self, gallery: str, vector: list[float], top_k: int) -> list[Hit]:
        """The best face of each of the `top_k` most similar subjects.

        A plain nearest-neighbour query for SEARCH_OVERFETCH x top_k faces, grouped here by
        subject, answers most calls: when those faces hold top_k subjects of the gallery, or
        are all there is, no subject left out can beat the ones found. Otherwise (a few
        subjects with many faces each) Qdrant's grouped query answers. In embedded mode the
        first query leaves out the gallery filter, which qdrant-client's local mode checks
        point by point in Python (most of a search's time); it answers when the gallery
        holds most of the collection, as it does under `make run`. Every path gives the
        same result.
        """
        if self.mode == "embedded":
            hits, complete = await self._best_per_subject(gallery, vector, top_k, filtered=False)
            if complete:
                return hits
        hits, complete = await self._best_per_subject(gallery, vector, top_k, filtered=True)
        if complete:
            return hits
        async with self._qdrant():
            groups = await self.client.query_points_groups(
                self.collection,
                query=vector,
                group_by="subject_id",
                group_size=1,
                limit=top_k,
                query_filter=match_filter(gallery=gallery),
                with_payload=False,
            )
        return [
            Hit(str(group.id), float(group.hits[0].score), str(group.hits[0].id))
            for group in groups.groups
            if group.hits
        ]

    async def _best_per_subject(
        self, gallery: str, vector: list[float], top_k: int, *, filtered: bool
    ) -> tuple[list[Hit], bool]:
        """The best face per subject among the nearest faces; True when that is the answer."""
        limit = top_k * SEARCH_OVERFETCH
        async with self._qdrant():
            result = await self.client.query_points(
                self.collection,
                query=vector,
                limit=limit,
                query_filter=match_filter(gallery=gallery) if filtered else None,
                with_payload=["gallery", "subject_id"],
            )
        best: dict[str, Hit] = {}
        for point in result.points:
            payload = point.payload or {}
            subject = str(payload.get("subject_id", ""))
            if payload.get("gallery") == gallery and subject and subject not in best:
                best[subject] = Hit(subject, float(point.score), str(point.id))
        complete = len(best) >= top_k or len(result.points) < limit
        return list(best.values())[:top_k], complete

    async def best_face_of(self, gallery: str, subject_id: str, vector: list[float]) -> Hit | None:
        async with self._qdrant():
            result = await self.client.query_points(
                self.collection,
                query=vector,
                limit=1,
                query_filter=match_filter(gallery=gallery, subject_id=subject_id),
            )
        if not result.points:
            return None
        point = result.points[0]
        return Hit(subject_id, float(point.score), str(point.id))

    async def _scroll(
        self, collection: str, scroll_filter: models.Filter
    ) -> AsyncIterator[models.Record]:
        offset: Any = None
        while True:
            points, offset = await self.client.scroll(
                collection, scroll_filter=scroll_filter, limit=256, offset=offset, with_payload=True
            )
            for point in points:
                yield point
            if offset is None:
                return
