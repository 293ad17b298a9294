"""Score gRPC service: the use cases over detect, embed, Qdrant and the cache."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import structlog
from prometheus_client import Gauge

from facescore.v1 import common_pb2, score_pb2, score_pb2_grpc
from services.common.errors import FaceScoreError, Reason
from services.common.logging import configure_logging
from services.common.server import serve
from services.score import validation
from services.score.analysis import Analysis, Analyzer
from services.score.cache import AnalysisCache, make_cache
from services.score.clients import InferenceClient
from services.score.settings import ScoreSettings
from services.score.storage import GalleryStore, ModelIdentity, face_id, open_store
from services.score.storage.layout import face_payload

log = structlog.get_logger(__name__)
MAX_PAGE_SIZE = 1000
SNAPSHOTS_DIR = "snapshots"  # under DATA_DIR: Snapshot's copies, until the caller takes them
GALLERY_FACES = Gauge("facescore_gallery_faces", "Faces stored per gallery.", ["gallery"])


class ScoreService(score_pb2_grpc.ScoreServiceServicer):
    service_name = score_pb2.DESCRIPTOR.services_by_name["ScoreService"].full_name

    def __init__(self, settings: ScoreSettings) -> None:
        self.settings = settings
        self._inference: InferenceClient | None = None
        self.cache: AnalysisCache = make_cache(settings)
        self._store: GalleryStore | None = None
        self._analyzer: Analyzer | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._detector = common_pb2.ModelInfo()
        self._recognizer = common_pb2.ModelInfo()

    def register(self, server: grpc.aio.Server) -> None:
        score_pb2_grpc.add_ScoreServiceServicer_to_server(self, server)

    async def start(self) -> None:
        # grpc.aio channels belong to the running event loop: open them here, not in __init__.
        self._inference = InferenceClient(
            self.settings.detect_target, self.settings.embed_target, self.settings.max_message_bytes
        )
        self._detector, self._recognizer = await self._wait_for_models(self._inference)
        identity = ModelIdentity(
            self._recognizer.name, self._recognizer.sha256, self._recognizer.embedding_dim
        )
        store = await open_store(self.settings, identity)
        await self.cache.start()
        self._analyzer = Analyzer(self._inference, self.cache, self._detector, identity)
        self._store = store
        self._gauges = asyncio.create_task(self._refresh_gallery_sizes(store))

    @staticmethod
    async def _wait_for_models(
        inference: InferenceClient,
    ) -> tuple[common_pb2.ModelInfo, common_pb2.ModelInfo]:
        """detect and embed may start after us: wait for them, saying so now and then."""
        last_said = 0.0
        while True:
            try:
                return await inference.model_infos(timeout=2.0)
            except FaceScoreError as error:
                if time.monotonic() - last_said > 10:
                    log.info("waiting for dependencies", detail=error.message)
                    last_said = time.monotonic()
            await asyncio.sleep(0.5)

    async def _refresh_gallery_sizes(self, store: GalleryStore) -> None:
        """Keep facescore_gallery_faces current for dashboards, without touching a request."""
        while True:
            try:
                for record in await store.list_galleries():
                    GALLERY_FACES.labels(record.name).set(
                        await store.count_faces(gallery=record.name)
                    )
            except FaceScoreError as error:
                log.warning("gallery sizes not refreshed", detail=error.message)
            await asyncio.sleep(self.settings.gallery_metrics_interval_s)

    async def stop(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
        if self._store is not None:
            await self._store.close()
        await self.cache.close()
        if self._inference is not None:
            await self._inference.close()

    def details(self) -> dict[str, Any]:
        store = self._store
        return {
            "detector": {"name": self._detector.name, "sha256": self._detector.sha256},
            "recognizer": {"name": self._recognizer.name, "sha256": self._recognizer.sha256},
            "qdrant": {"mode": store.mode, "collection": store.collection} if store else None,
            "cache": self.cache.status(),
            "threshold": self.settings.threshold,
        }

    def _ready(self) -> tuple[GalleryStore, Analyzer]:
        if self._store is None or self._analyzer is None:
            raise FaceScoreError(
                Reason.NOT_READY, "score service is still starting", grpc.StatusCode.UNAVAILABLE
            )
        return self._store, self._analyzer

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        left: float | None = context.time_remaining()
        if left is None:
            left = self.settings.default_deadline_s
        # The server ends a call at max_call_s anyway; its own steps should give up first.
        return time.monotonic() + min(left, self.settings.max_call_s)

    # Use cases.

    async def Analyze(
        self, request: score_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.AnalyzeResponse:
        _, analyzer = self._ready()
        analysis = await analyzer.analyze(request.image, self._deadline(context))
        return score_pb2.AnalyzeResponse(
            image=analysis.image,
            faces=[
                analysis.face(i, request.include_embeddings) for i in range(len(analysis.faces))
            ],
            cached=analysis.cached,
        )

    async def Enroll(
        self, request: score_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.EnrollResponse:
        store, analyzer = self._ready()
        gallery = validation.gallery_name(request.gallery)
        subject = validation.subject_id(request.subject_id)
        metadata = validation.metadata_json(request.metadata_json, self.settings.max_metadata_bytes)
        selection = validation.face_selection(request.face_selection)
        gates = validation.quality_gates(request.gates)
        await store.require_gallery(gallery)
        analysis = await analyzer.analyze(request.image, self._deadline(context))
        if not analysis.faces:
            raise FaceScoreError(Reason.NO_FACE, "no face found in the photo")
        index = 0
        if request.HasField("face_index"):
            index = request.face_index
            if not 0 <= index < len(analysis.faces):
                raise FaceScoreError(
                    Reason.INVALID_ARGUMENT,
                    f"face_index {index} is out of range: the photo holds "
                    f"{len(analysis.faces)} face(s)",
                    metadata={"field": "face_index", "faces": str(len(analysis.faces))},
                )
        elif selection == score_pb2.FACE_SELECTION_REQUIRE_SINGLE and len(analysis.faces) > 1:
            raise FaceScoreError(
                Reason.MULTIPLE_FACES,
                f"the photo holds {len(analysis.faces)} faces; send a photo of one person or "
                "choose FACE_SELECTION_LARGEST",
                metadata={"faces": str(len(analysis.faces))},
            )
        face = analysis.faces[index]
        validation.check_gates(face.quality, face.score, gates, self.settings)
        point_id = face_id(gallery, subject, analysis.image.sha256, index)
        payload = face_payload(
            store.identity,
            gallery,
            subject,
            point_id,
            metadata,
            image_sha256=analysis.image.sha256,
            face_index=index,
            box=[face.box.x1, face.box.y1, face.box.x2, face.box.y2],
            detection_score=face.score,
            quality={
                "face_size_px": face.quality.face_size_px,
                "inter_eye_px": face.quality.inter_eye_px,
                "sharpness": face.quality.sharpness,
                "yaw": face.quality.yaw,
                "pitch": face.quality.pitch,
                "roll": face.quality.roll,
                "brightness": face.quality.brightness,
            },
        )
        created = await store.enroll(
            gallery, subject, point_id, analysis.embeddings[index].tolist(), payload, metadata
        )
        log.info("enrolled", gallery=gallery, subject_id=subject, face_id=point_id, created=created)
        return score_pb2.EnrollResponse(
            face_id=point_id, face=analysis.face(index), created=created, image=analysis.image
        )

    async def Identify(
        self, request: score_pb2.IdentifyRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.IdentifyResponse:
        store, analyzer = self._ready()
        gallery = validation.gallery_name(request.gallery)
        threshold = validation.threshold(
            request.threshold if request.HasField("threshold") else None, self.settings.threshold
        )
        top_k = request.top_k or self.settings.top_k
        if not 1 <= top_k <= 100:
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT, "top_k must be 1-100", metadata={"field": "top_k"}
            )
        await store.require_gallery(gallery)
        analysis = await analyzer.analyze(request.image, self._deadline(context))
        response = score_pb2.IdentifyResponse(image=analysis.image, threshold=threshold)
        hits_per_face = await asyncio.gather(
            *(store.search(gallery, v.tolist(), top_k) for v in analysis.embeddings)
        )
        for index, hits in enumerate(hits_per_face):
            candidates = [
                score_pb2.SubjectMatch(
                    subject_id=h.subject_id,
                    similarity=h.similarity,
                    face_id=h.face_id,
                    match=h.similarity >= threshold,
                )
                for h in hits
            ]
            best = candidates[0] if candidates and candidates[0].match else None
            response.faces.add(
                face=analysis.face(index),
                candidates=candidates,
                subject_id=best.subject_id if best else "",
                unknown=best is None,
            )
        return response

    async def Verify(
        self, request: score_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.VerifyResponse:
        store, analyzer = self._ready()
        threshold = validation.threshold(
            request.threshold if request.HasField("threshold") else None, self.settings.threshold
        )
        deadline = self._deadline(context)
        target = request.WhichOneof("target")
        if target is None:
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT,
                "verify needs other_image or subject",
                metadata={"field": "target"},
            )
        if target == "subject":
            gallery = validation.gallery_name(request.subject.gallery)
            subject = validation.subject_id(request.subject.subject_id)
            await store.require_gallery(gallery)
            await store.require_subject(gallery, subject)
            probe = _largest(await analyzer.analyze(request.image, deadline), "image")
            hit = await store.best_face_of(gallery, subject, probe[1].tolist())
            if hit is None:
                raise FaceScoreError(
                    Reason.SUBJECT_NOT_FOUND,
                    f"subject {subject!r} has no faces",
                    grpc.StatusCode.NOT_FOUND,
                    metadata={"gallery": gallery, "subject_id": subject},
                )
            return score_pb2.VerifyResponse(
                similarity=hit.similarity,
                match=hit.similarity >= threshold,
                threshold=threshold,
                face=probe[0],
                matched_face_id=hit.face_id,
            )
        first, second = await asyncio.gather(
            analyzer.analyze(request.image, deadline),
            analyzer.analyze(request.other_image, deadline),
        )
        probe, other = _largest(first, "image"), _largest(second, "other_image")
        similarity = float(np.dot(probe[1], other[1]))
        return score_pb2.VerifyResponse(
            similarity=similarity,
            match=similarity >= threshold,
            threshold=threshold,
            face=probe[0],
            other_face=other[0],
        )

    # Galleries, subjects, faces.

    async def CreateGallery(
        self, request: score_pb2.CreateGalleryRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.Gallery:
        store, _ = self._ready()
        record = await store.create_gallery(validation.gallery_name(request.name))
        return score_pb2.Gallery(name=record.name, created_unix_ms=record.created_unix_ms)

    async def ListGalleries(
        self, request: score_pb2.ListGalleriesRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.ListGalleriesResponse:
        store, _ = self._ready()
        records = await store.list_galleries()
        counts = await asyncio.gather(*(store.count_faces(gallery=r.name) for r in records))
        return score_pb2.ListGalleriesResponse(
            galleries=[
                score_pb2.Gallery(name=r.name, face_count=n, created_unix_ms=r.created_unix_ms)
                for r, n in zip(records, counts, strict=True)
            ]
        )

    async def DeleteGallery(
        self, request: score_pb2.DeleteGalleryRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.DeleteGalleryResponse:
        store, _ = self._ready()
        deleted = await store.delete_gallery(validation.gallery_name(request.name))
        log.info("gallery deleted", gallery=request.name, faces=deleted)
        return score_pb2.DeleteGalleryResponse(deleted_faces=deleted)

    async def ListSubjects(
        self, request: score_pb2.ListSubjectsRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.ListSubjectsResponse:
        store, _ = self._ready()
        gallery = validation.gallery_name(request.gallery)
        page_size = request.page_size or 100
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT,
                f"page_size must be 1-{MAX_PAGE_SIZE}",
                metadata={"field": "page_size"},
            )
        offset = validation.page_token(request.page_token, gallery)
        await store.require_gallery(gallery)
        records, token = await store.list_subjects(gallery, page_size, offset)
        counts = await asyncio.gather(
            *(store.count_faces(gallery=gallery, subject_id=r.subject_id) for r in records)
        )
        return score_pb2.ListSubjectsResponse(
            subjects=[
                score_pb2.Subject(
                    gallery=r.gallery,
                    subject_id=r.subject_id,
                    face_count=n,
                    metadata_json=r.metadata_json,
                    created_unix_ms=r.created_unix_ms,
                )
                for r, n in zip(records, counts, strict=True)
            ],
            next_page_token=validation.next_page_token(token, gallery),
        )

    async def GetSubject(
        self, request: score_pb2.GetSubjectRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.Subject:
        store, _ = self._ready()
        gallery = validation.gallery_name(request.gallery)
        await store.require_gallery(gallery)
        record = await store.require_subject(gallery, validation.subject_id(request.subject_id))
        face_ids = await store.subject_face_ids(gallery, record.subject_id)
        return score_pb2.Subject(
            gallery=gallery,
            subject_id=record.subject_id,
            face_count=len(face_ids),
            metadata_json=record.metadata_json,
            created_unix_ms=record.created_unix_ms,
            face_ids=face_ids,
        )

    async def DeleteSubject(
        self, request: score_pb2.DeleteSubjectRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.DeleteSubjectResponse:
        store, _ = self._ready()
        gallery = validation.gallery_name(request.gallery)
        await store.require_gallery(gallery)
        subject = validation.subject_id(request.subject_id)
        deleted = await store.delete_subject(gallery, subject)
        return score_pb2.DeleteSubjectResponse(deleted_faces=deleted)

    async def DeleteFace(
        self, request: score_pb2.DeleteFaceRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.DeleteFaceResponse:
        store, _ = self._ready()
        gallery = validation.gallery_name(request.gallery)
        await store.require_gallery(gallery)
        await store.delete_face(gallery, request.face_id)
        return score_pb2.DeleteFaceResponse()

    async def GetServiceInfo(
        self, request: score_pb2.GetServiceInfoRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.ServiceInfo:
        store, _ = self._ready()
        return score_pb2.ServiceInfo(
            detector=self._detector,
            recognizer=self._recognizer,
            collection=store.collection,
            default_threshold=self.settings.threshold,
        )

    async def Snapshot(
        self, request: score_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.SnapshotResponse:
        store, _ = self._ready()
        name = (
            validation.snapshot_name(request.name)
            if request.name
            else dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        )
        data_dir = self.settings.data_dir.absolute()
        folder = data_dir / SNAPSHOTS_DIR / name
        if folder.exists():
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT,
                f"snapshot {name!r} already exists in {folder.parent}",
                grpc.StatusCode.ALREADY_EXISTS,
                metadata={"field": "name"},
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Shielded: a caller gone mid-copy must not leave writes held back or a half copy.
        taken = await asyncio.shield(store.snapshot(folder))
        return score_pb2.SnapshotResponse(
            folder=folder.relative_to(data_dir).as_posix(),
            collections=taken.collections,
            faces=taken.faces,
            subjects=taken.subjects,
            galleries=taken.galleries,
            bytes=await asyncio.to_thread(_folder_bytes, folder),
            created_unix_ms=taken.created_unix_ms,
        )

    async def GetHealth(
        self, request: score_pb2.GetHealthRequest, context: grpc.aio.ServicerContext
    ) -> score_pb2.HealthReport:
        report = score_pb2.HealthReport()
        ready = self._store is not None and self._analyzer is not None
        report.dependencies.add(name="score", ok=ready, detail="SERVING" if ready else "STARTING")
        if self._inference is not None:
            for name, status in (await self._inference.health(timeout=1.0)).items():
                report.dependencies.add(name=name, ok=status == "SERVING", detail=status)
        if self._store is not None:
            try:
                await self._store.ping()
                report.dependencies.add(name="qdrant", ok=True, detail=self._store.mode)
            except FaceScoreError as error:
                # Health is shown to clients: the reason only; the URL and the error go to the log.
                log.warning(
                    "qdrant health check failed", reason=str(error.reason), detail=error.message
                )
                report.dependencies.add(name="qdrant", ok=False, detail=str(error.reason))
        cache = self.cache.status()
        report.dependencies.add(
            name="cache",
            ok=bool(cache.get("up")) or cache.get("kind") == "off",
            detail=str(cache.get("kind")),
        )
        needed = {"score", "detect", "embed", "qdrant"}
        report.ok = ready and all(d.ok for d in report.dependencies if d.name in needed)
        return report


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _largest(analysis: Analysis, field: str) -> tuple[score_pb2.AnalyzedFace, np.ndarray]:
    if not analysis.faces:
        raise FaceScoreError(Reason.NO_FACE, f"no face found in {field}", metadata={"field": field})
    return analysis.face(0), analysis.embeddings[0]


def main() -> int:
    settings = ScoreSettings()
    configure_logging("score", settings.log_level, settings.log_format)
    return asyncio.run(serve(ScoreService(settings), settings))
