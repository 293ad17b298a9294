"""The score service over gRPC on loopback: real detect and embed servers, a real
redis-server, and Qdrant in embedded (local) mode under a temporary DATA_DIR.
The Qdrant server binary cannot be installed here; the same client code talks to it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.errors import error_info, reason_of
from tests.conftest import ServiceProcess, wait_until
from tests.races import RaceTally

Photo = Callable[[str], bytes]
StartService = Callable[..., ServiceProcess]


def score_env(
    detect: ServiceProcess, embed: ServiceProcess, data_dir: Path, redis_url: str | None
) -> dict[str, str]:
    env = {
        "SCORE_DETECT_TARGET": f"dns:///{detect.address}",
        "SCORE_EMBED_TARGET": f"dns:///{embed.address}",
        "SCORE_DATA_DIR": str(data_dir),
        "SCORE_REDIS_RETRY_S": "0.2",
        # A healthy Redis slowed by a busy machine must not read as down: only a dead one.
        "SCORE_REDIS_TIMEOUT_S": "5",
    }
    if redis_url:
        env["SCORE_REDIS_URL"] = redis_url
    return env


@pytest.fixture(scope="module")
def score_service(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServiceProcess:
    data_dir = tmp_path_factory.mktemp("score-data")
    return start_service("score", **score_env(detect_service, embed_service, data_dir, redis_url))


class Client:
    """The generated stub with a deadline on every call, as a careful caller uses it."""

    def __init__(self, service: ServiceProcess) -> None:
        self.channel = grpc.insecure_channel(service.address)
        self.stub = score_pb2_grpc.ScoreServiceStub(self.channel)

    def __getattr__(self, method: str) -> Callable[..., object]:
        call = getattr(self.stub, method)
        return lambda request, timeout=30, **kw: call(request, timeout=timeout, **kw)


@pytest.fixture()
def score(score_service: ServiceProcess) -> Iterator[Client]:
    client = Client(score_service)
    yield client
    client.channel.close()


_galleries = iter(range(10_000))


@pytest.fixture()
def gallery(score: Client) -> str:
    name = f"g{next(_galleries)}-{int(time.time() * 1000) % 100000}"
    score.CreateGallery(score_pb2.CreateGalleryRequest(name=name))
    return name


def reason(call: Callable[[], object]) -> str | None:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return reason_of(raised.value)


def field_of(error: grpc.RpcError) -> str | None:
    info = error_info(error)
    return info.metadata.get("field") if info is not None else None


def jpeg_variant(data: bytes, quality: int, crop: int = 0) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if crop:
        image = image.crop((crop, crop, image.width - crop, image.height - crop))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def enroll(
    score: Client, gallery: str, subject: str, image: bytes, **options: object
) -> score_pb2.EnrollResponse:
    return score.Enroll(  # type: ignore[no-any-return]
        score_pb2.EnrollRequest(gallery=gallery, subject_id=subject, image=image, **options)
    )


def counter(service: ServiceProcess, method: str) -> float:
    with urllib.request.urlopen(service.metrics_url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    pattern = rf'^facescore_grpc_requests_total\{{[^}}]*method="[^"]*/{method}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def cache_lookups(service: ServiceProcess, result: str) -> float:
    return service.metric("facescore_cache_requests_total", result=result)


def test_identify_finds_yao_ming_and_nobody_else(score: Client, gallery: str, photo: Photo) -> None:
    enroll(score, gallery, "yao", photo("yaoming.jpg"))
    reply = score.Identify(score_pb2.IdentifyRequest(gallery=gallery, image=photo("players.jpg")))
    assert len(reply.faces) == 22
    matched = [f for f in reply.faces if not f.unknown]
    assert [f.subject_id for f in matched] == ["yao"]
    assert matched[0].candidates[0].similarity >= 0.5
    assert all(f.subject_id == "" for f in reply.faces if f.unknown)
    assert reply.threshold == pytest.approx(0.40)
    strict = score.Identify(
        score_pb2.IdentifyRequest(gallery=gallery, image=photo("players.jpg"), threshold=0.99)
    )
    assert all(f.unknown for f in strict.faces)


def test_verify_photo_against_photo_and_subject(score: Client, gallery: str, photo: Photo) -> None:
    found = score.Identify(score_pb2.IdentifyRequest(gallery=gallery, image=photo("players.jpg")))
    assert not any(not f.unknown for f in found.faces)  # empty gallery: everyone is unknown
    enroll(score, gallery, "yao", photo("yaoming.jpg"))
    found = score.Identify(score_pb2.IdentifyRequest(gallery=gallery, image=photo("players.jpg")))
    box = next(f.face.box for f in found.faces if not f.unknown)
    players = Image.open(io.BytesIO(photo("players.jpg")))
    margin = (box.x2 - box.x1) * 0.6
    crop = players.crop((box.x1 - margin, box.y1 - margin, box.x2 + margin, box.y2 + margin))
    buffer = io.BytesIO()
    crop.convert("RGB").save(buffer, "JPEG", quality=95)

    same = score.Verify(
        score_pb2.VerifyRequest(image=photo("yaoming.jpg"), other_image=buffer.getvalue())
    )
    assert same.match and same.similarity >= 0.5
    other = score.Verify(
        score_pb2.VerifyRequest(image=photo("yaoming.jpg"), other_image=photo("t1.jpg"))
    )
    assert not other.match and other.similarity < 0.3
    subject = score.Verify(
        score_pb2.VerifyRequest(
            image=buffer.getvalue(), subject=score_pb2.SubjectRef(gallery=gallery, subject_id="yao")
        )
    )
    assert subject.match and subject.matched_face_id
    stranger = score.Verify(
        score_pb2.VerifyRequest(
            image=photo("t1.jpg"), subject=score_pb2.SubjectRef(gallery=gallery, subject_id="yao")
        )
    )
    assert not stranger.match


def test_enroll_is_idempotent(score: Client, gallery: str, photo: Photo) -> None:
    first = enroll(score, gallery, "yao", photo("yaoming.jpg"), metadata_json='{"team": "rockets"}')
    again = enroll(score, gallery, "yao", photo("yaoming.jpg"))
    assert first.created and not again.created
    assert first.face_id == again.face_id
    subject = score.GetSubject(score_pb2.GetSubjectRequest(gallery=gallery, subject_id="yao"))
    assert subject.face_count == 1 and list(subject.face_ids) == [first.face_id]
    assert json.loads(subject.metadata_json) == {"team": "rockets"}
    assert subject.created_unix_ms > 0


async def test_concurrent_enrolls_give_exact_counts(
    score_service: ServiceProcess, gallery: str, photo: Photo
) -> None:
    photos = [jpeg_variant(photo("yaoming.jpg"), 60 + i % 35, crop=i // 35) for i in range(50)]
    assert len({p for p in photos}) == 50
    async with grpc.aio.insecure_channel(score_service.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        replies = await asyncio.gather(
            *(
                stub.Enroll(
                    score_pb2.EnrollRequest(gallery=gallery, subject_id=f"s{i % 5}", image=p),
                    timeout=60,
                )
                for i, p in enumerate(photos)
            )
        )
        assert all(r.created for r in replies)
        listing = await stub.ListSubjects(
            score_pb2.ListSubjectsRequest(gallery=gallery), timeout=10
        )
        galleries = await stub.ListGalleries(score_pb2.ListGalleriesRequest(), timeout=10)
    assert sorted((s.subject_id, s.face_count) for s in listing.subjects) == [
        (f"s{i}", 10) for i in range(5)
    ]
    assert next(g for g in galleries.galleries if g.name == gallery).face_count == 50


async def test_enroll_racing_deletes_leaves_no_half_written_state(
    score_service: ServiceProcess, gallery: str, photo: Photo
) -> None:
    """Enrollments of a subject raced by deletes of that subject, then of the gallery.

    Whatever order the calls take, a subject record and its faces come and go together,
    and no face outlives its gallery. (Embedded Qdrant never yields inside a call:
    tests/score/test_gallery_writes.py interleaves the store's writes as a server would.)
    """
    photos = [jpeg_variant(photo("yaoming.jpg"), 60 + i) for i in range(6)]
    async with grpc.aio.insecure_channel(score_service.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)

        async def consistent(gallery: str) -> None:
            listing = await stub.ListSubjects(
                score_pb2.ListSubjectsRequest(gallery=gallery), timeout=10
            )
            assert all(s.face_count > 0 for s in listing.subjects), listing
            galleries = await stub.ListGalleries(score_pb2.ListGalleriesRequest(), timeout=10)
            faces = next(g.face_count for g in galleries.galleries if g.name == gallery)
            assert faces == sum(s.face_count for s in listing.subjects)

        enroll_request = score_pb2.EnrollRequest
        tally = RaceTally()
        for _ in range(4):
            await asyncio.gather(
                *(
                    tally.run(
                        "enroll",
                        stub.Enroll(
                            enroll_request(gallery=gallery, subject_id="racer", image=p),
                            timeout=60,
                        ),
                    )
                    for p in photos
                ),
                *(
                    tally.run(
                        "delete subject",
                        stub.DeleteSubject(
                            score_pb2.DeleteSubjectRequest(gallery=gallery, subject_id="racer"),
                            timeout=60,
                        ),
                    )
                    for _ in range(3)
                ),
            )
            await consistent(gallery)
        assert tally.done["enroll"] > 0, tally
        assert tally.done["delete subject"] > 0, tally

        # Photos not analyzed yet: each enrollment awaits detect and embed, and the delete
        # lands while they work.
        fresh = [jpeg_variant(photo("yaoming.jpg"), 80 + i) for i in range(6)]
        doomed = f"{gallery}-doomed"
        await stub.CreateGallery(score_pb2.CreateGalleryRequest(name=doomed), timeout=10)
        doomed_tally = RaceTally()
        await asyncio.gather(
            *(
                doomed_tally.run(
                    "enroll",
                    stub.Enroll(
                        enroll_request(gallery=doomed, subject_id=f"d{i}", image=p), timeout=60
                    ),
                )
                for i, p in enumerate(fresh)
            ),
            doomed_tally.run(
                "delete gallery",
                stub.DeleteGallery(score_pb2.DeleteGalleryRequest(name=doomed), timeout=60),
            ),
        )
        assert doomed_tally.done["delete gallery"] == 1, doomed_tally
        # Faces left behind in the deleted gallery would reappear when it is created again.
        await stub.CreateGallery(score_pb2.CreateGalleryRequest(name=doomed), timeout=10)
        listing = await stub.ListSubjects(score_pb2.ListSubjectsRequest(gallery=doomed), timeout=10)
        galleries = await stub.ListGalleries(score_pb2.ListGalleriesRequest(), timeout=10)
        assert not listing.subjects
        assert next(g.face_count for g in galleries.galleries if g.name == doomed) == 0


def test_subjects_are_listed_page_by_page(score: Client, gallery: str, photo: Photo) -> None:
    for i in range(5):
        enroll(score, gallery, f"p{i}", jpeg_variant(photo("yaoming.jpg"), 70 + i))
    seen, token, pages = [], "", 0
    while True:
        page = score.ListSubjects(
            score_pb2.ListSubjectsRequest(gallery=gallery, page_size=2, page_token=token)
        )
        seen += [s.subject_id for s in page.subjects]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"p{i}" for i in range(5)] and pages == 3


def test_deletes_leave_nothing_behind(score: Client, gallery: str, photo: Photo) -> None:
    keep = enroll(score, gallery, "keep", jpeg_variant(photo("yaoming.jpg"), 90))
    gone = [enroll(score, gallery, "gone", jpeg_variant(photo("yaoming.jpg"), q)) for q in (80, 85)]
    deleted = score.DeleteSubject(
        score_pb2.DeleteSubjectRequest(gallery=gallery, subject_id="gone")
    )
    assert deleted.deleted_faces == 2
    reply = score.Identify(score_pb2.IdentifyRequest(gallery=gallery, image=photo("yaoming.jpg")))
    assert {c.subject_id for c in reply.faces[0].candidates} == {"keep"}
    assert (
        reason(
            lambda: score.DeleteFace(
                score_pb2.DeleteFaceRequest(gallery=gallery, face_id=gone[0].face_id)
            )
        )
        == "face_not_found"
    )
    score.DeleteFace(score_pb2.DeleteFaceRequest(gallery=gallery, face_id=keep.face_id))
    assert (
        score.GetSubject(score_pb2.GetSubjectRequest(gallery=gallery, subject_id="keep")).face_count
        == 0
    )

    enroll(score, gallery, "again", photo("yaoming.jpg"))
    assert score.DeleteGallery(score_pb2.DeleteGalleryRequest(name=gallery)).deleted_faces == 1
    assert gallery not in [
        g.name for g in score.ListGalleries(score_pb2.ListGalleriesRequest()).galleries
    ]
    score.CreateGallery(score_pb2.CreateGalleryRequest(name=gallery))
    listed = score.ListGalleries(score_pb2.ListGalleriesRequest()).galleries
    assert next(g for g in listed if g.name == gallery).face_count == 0
    assert not score.ListSubjects(score_pb2.ListSubjectsRequest(gallery=gallery)).subjects


def test_repeated_photo_is_answered_from_the_cache(
    score: Client, detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Photo
) -> None:
    image = photo("gdp.jpg")
    first = score.Analyze(score_pb2.AnalyzeRequest(image=image, include_embeddings=True))
    detects, embeds = counter(detect_service, "Detect"), counter(embed_service, "Embed")
    second = score.Analyze(score_pb2.AnalyzeRequest(image=image, include_embeddings=True))
    assert not first.cached and second.cached
    assert counter(detect_service, "Detect") == detects
    assert counter(embed_service, "Embed") == embeds
    assert len(second.faces) == len(first.faces) == 5
    np.testing.assert_allclose(
        [f.embedding for f in second.faces], [f.embedding for f in first.faces], atol=1e-6
    )
    assert [f.box for f in second.faces] == [f.box for f in first.faces]


def test_reasons_of_bad_requests(score: Client, gallery: str, photo: Photo) -> None:
    blank = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(blank, "PNG")
    req = score_pb2.EnrollRequest
    assert (
        reason(lambda: score.Enroll(req(gallery=gallery, subject_id="x", image=blank.getvalue())))
        == "no_face"
    )
    assert (
        reason(lambda: score.Enroll(req(gallery=gallery, subject_id="x", image=photo("t1.jpg"))))
        == "multiple_faces"
    )
    largest = score.Enroll(
        req(
            gallery=gallery,
            subject_id="x",
            image=photo("t1.jpg"),
            face_selection=score_pb2.FACE_SELECTION_LARGEST,
        )
    )
    assert largest.created
    gates = score_pb2.QualityGates(min_face_size=5000)
    with pytest.raises(grpc.RpcError) as raised:
        score.Enroll(req(gallery=gallery, subject_id="x", image=photo("yaoming.jpg"), gates=gates))
    assert reason_of(raised.value) == "face_quality_too_low"
    assert "min_face_size" in (raised.value.details() or "")
    assert (
        reason(lambda: score.Enroll(req(gallery=gallery, subject_id="x", image=b"")))
        == "empty_image"
    )
    assert (
        reason(
            lambda: score.Enroll(req(gallery=gallery, subject_id="x", image=photo("t1.jpg")[:5000]))
        )
        == "corrupt_image"
    )
    assert (
        reason(
            lambda: score.Enroll(
                req(
                    gallery=gallery,
                    subject_id="x",
                    image=photo("yaoming.jpg"),
                    metadata_json="[1, 2]",
                )
            )
        )
        == "invalid_metadata"
    )
    assert (
        reason(
            lambda: score.Enroll(
                req(
                    gallery=gallery,
                    subject_id="x",
                    image=photo("yaoming.jpg"),
                    metadata_json='{"a": "' + "x" * 5000 + '"}',
                )
            )
        )
        == "invalid_metadata"
    )
    assert (
        reason(
            lambda: score.Enroll(
                req(gallery="no such/gallery", subject_id="x", image=photo("yaoming.jpg"))
            )
        )
        == "invalid_argument"
    )
    assert (
        reason(
            lambda: score.Enroll(req(gallery=gallery, subject_id="", image=photo("yaoming.jpg")))
        )
        == "invalid_argument"
    )
    assert (
        reason(
            lambda: score.Enroll(req(gallery="missing", subject_id="x", image=photo("yaoming.jpg")))
        )
        == "gallery_not_found"
    )
    assert (
        reason(
            lambda: score.Identify(
                score_pb2.IdentifyRequest(gallery="missing", image=photo("yaoming.jpg"))
            )
        )
        == "gallery_not_found"
    )
    assert (
        reason(lambda: score.CreateGallery(score_pb2.CreateGalleryRequest(name=gallery)))
        == "gallery_exists"
    )
    assert (
        reason(
            lambda: score.GetSubject(
                score_pb2.GetSubjectRequest(gallery=gallery, subject_id="nobody")
            )
        )
        == "subject_not_found"
    )
    assert (
        reason(
            lambda: score.Verify(
                score_pb2.VerifyRequest(
                    image=photo("yaoming.jpg"),
                    subject=score_pb2.SubjectRef(gallery=gallery, subject_id="nobody"),
                )
            )
        )
        == "subject_not_found"
    )
    assert (
        reason(
            lambda: score.Verify(
                score_pb2.VerifyRequest(image=photo("yaoming.jpg"), other_image=blank.getvalue())
            )
        )
        == "no_face"
    )
    assert (
        reason(lambda: score.Verify(score_pb2.VerifyRequest(image=photo("yaoming.jpg"))))
        == "invalid_argument"
    )
    assert (
        reason(
            lambda: score.Identify(
                score_pb2.IdentifyRequest(gallery=gallery, image=photo("yaoming.jpg"), threshold=2)
            )
        )
        == "invalid_argument"
    )
    # Ids that cannot be one segment of a REST path are refused before anything is stored.
    for bad in ("..", ".", "a/b", " x", ""):
        with pytest.raises(grpc.RpcError) as raised:
            score.Enroll(req(gallery=gallery, subject_id=bad, image=photo("yaoming.jpg")))
        assert reason_of(raised.value) == "invalid_argument", bad
        assert "subject_id" in (raised.value.details() or ""), bad
    assert score.Enroll(req(gallery=gallery, subject_id="J. Doe (2)", image=photo("yaoming.jpg")))
    assert (
        reason(
            lambda: score.DeleteFace(
                score_pb2.DeleteFaceRequest(gallery=gallery, face_id="not-a-uuid")
            )
        )
        == "face_not_found"
    )
    assert (
        reason(
            lambda: score.ListSubjects(
                score_pb2.ListSubjectsRequest(gallery=gallery, page_size=5000)
            )
        )
        == "invalid_argument"
    )
    # An unknown face_selection is refused, not taken for FACE_SELECTION_LARGEST.
    with pytest.raises(grpc.RpcError) as raised:
        score.Enroll(req(gallery=gallery, subject_id="x", image=photo("t1.jpg"), face_selection=7))
    assert reason_of(raised.value) == "invalid_argument"
    assert field_of(raised.value) == "face_selection"
    # A NaN gate would let every face pass.
    with pytest.raises(grpc.RpcError) as raised:
        score.Enroll(
            req(
                gallery=gallery,
                subject_id="x",
                image=photo("yaoming.jpg"),
                gates=score_pb2.QualityGates(min_sharpness=float("nan")),
            )
        )
    assert reason_of(raised.value) == "invalid_argument"
    assert field_of(raised.value) == "gates.min_sharpness"
    # Metadata JSON cannot carry back (or that would lose a value) is refused, not stored.
    for metadata in (
        '{"a": NaN}',
        '{"a": 1e999}',
        '{"a": 1, "a": 2}',
        '{"a": "\\ud800"}',
        '{"a": ' + "[" * 1500 + "]" * 1500 + "}",
        '{"a": ' + "[" * 40 + "]" * 40 + "}",
    ):
        assert (
            reason(
                lambda m=metadata: score.Enroll(
                    req(
                        gallery=gallery, subject_id="m", image=photo("yaoming.jpg"), metadata_json=m
                    )
                )
            )
            == "invalid_metadata"
        ), metadata[:20]
    # A strip of an image is searched (no face), not an internal error of detect.
    strip = io.BytesIO()
    Image.new("RGB", (1, 5000), (128, 128, 128)).save(strip, "PNG")
    assert not score.Analyze(score_pb2.AnalyzeRequest(image=strip.getvalue())).faces


def test_page_tokens_are_checked(score: Client, gallery: str, photo: Photo) -> None:
    other = f"{gallery}-other"
    score.CreateGallery(score_pb2.CreateGalleryRequest(name=other))
    for name in (gallery, other):
        for i in range(3):
            enroll(score, name, f"p{i}", photo("yaoming.jpg"))
    page = score.ListSubjects(score_pb2.ListSubjectsRequest(gallery=other, page_size=1))
    for token in ("garbage", "12345", str(uuid.uuid4()), page.next_page_token):
        with pytest.raises(grpc.RpcError) as raised:
            score.ListSubjects(
                score_pb2.ListSubjectsRequest(gallery=gallery, page_size=1, page_token=token)
            )
        assert reason_of(raised.value) == "invalid_argument", token
        assert field_of(raised.value) == "page_token"


def test_undecodable_requests_are_invalid_arguments(score_service: ServiceProcess) -> None:
    with grpc.insecure_channel(score_service.address) as channel:
        raw = channel.unary_unary(
            "/facescore.v1.ScoreService/GetSubject",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        not_utf8 = b"\x0a\x01g\x12\x02\xff\xfe"  # subject_id is not UTF-8
        for message in (not_utf8, b"\xff\xff\xff"):
            with pytest.raises(grpc.RpcError) as raised:
                raw(message, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(raised.value) == "invalid_argument"


def test_request_id_travels_to_detect_and_embed(
    score: Client, detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Photo
) -> None:
    score.Analyze(
        score_pb2.AnalyzeRequest(image=jpeg_variant(photo("yaoming.jpg"), 51)),
        metadata=(("x-request-id", "rid-score-42"),),
    )
    for service in (detect_service, embed_service):
        # Access lines are written after the reply is sent: wait for the line, not a while.
        service.wait_for_log('"request_id": "rid-score-42"')


def test_gallery_survives_a_restart(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    tmp_path: Path,
    photo: Photo,
) -> None:
    env = score_env(detect_service, embed_service, tmp_path, None)
    service = start_service("score", **env)
    client = Client(service)
    client.CreateGallery(score_pb2.CreateGalleryRequest(name="kept"))
    face = enroll(client, "kept", "yao", photo("yaoming.jpg"), metadata_json='{"n": 1}')
    assert service.stop() == 0
    service.start()
    service.wait_serving()
    client = Client(service)
    subject = client.GetSubject(score_pb2.GetSubjectRequest(gallery="kept", subject_id="yao"))
    assert list(subject.face_ids) == [face.face_id] and subject.metadata_json == '{"n":1}'
    reply = client.Identify(score_pb2.IdentifyRequest(gallery="kept", image=photo("players.jpg")))
    assert [f.subject_id for f in reply.faces if not f.unknown] == ["yao"]


def test_a_collection_of_another_dimension_stops_startup(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    from qdrant_client import QdrantClient, models

    from facescore.v1 import common_pb2, embed_pb2_grpc

    with grpc.insecure_channel(embed_service.address) as channel:
        info = embed_pb2_grpc.EmbedServiceStub(channel).GetModelInfo(
            common_pb2.GetModelInfoRequest(), timeout=5
        )
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    client.create_collection(
        f"faces_{info.name}_{info.sha256[:12]}",
        vectors_config=models.VectorParams(size=128, distance=models.Distance.COSINE),
    )
    client.close()
    service = start_service(
        "score", wait=False, **score_env(detect_service, embed_service, tmp_path, None)
    )
    assert service.process is not None
    assert service.process.wait(60) == 1
    assert "embedding_model_mismatch" in service.logs()
    assert "dimension 128, the model gives 512" in service.logs()


def test_redis_outage_keeps_answers_flowing(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    redis_server: object,
    tmp_path: Path,
    photo: Photo,
) -> None:
    service = start_service(
        "score",
        **score_env(detect_service, embed_service, tmp_path, redis_server.url),  # type: ignore[attr-defined]
    )
    client = Client(service)
    analyze = lambda image: client.Analyze(score_pb2.AnalyzeRequest(image=image))  # noqa: E731
    warm = jpeg_variant(photo("yaoming.jpg"), 52)
    analyze(warm)
    assert analyze(warm).cached
    redis_server.kill()  # type: ignore[attr-defined]
    errors, bypassed = cache_lookups(service, "error"), cache_lookups(service, "bypass")
    for quality in range(60, 70):
        reply = analyze(jpeg_variant(photo("yaoming.jpg"), quality))
        assert len(reply.faces) == 1 and not reply.cached
    # One lookup finds Redis dead and opens the circuit; the others skip Redis without
    # waiting on it, so the outage costs one failed call, not a stall per request.
    assert cache_lookups(service, "error") - errors == 1
    assert cache_lookups(service, "bypass") - bypassed == 9
    redis_server.start()  # type: ignore[attr-defined]
    fresh = jpeg_variant(photo("yaoming.jpg"), 53)

    def cached_again() -> bool:
        analyze(fresh)
        return bool(analyze(fresh).cached)

    wait_until("caching to resume after redis came back", cached_again)


def test_embed_outage_fails_fast_then_recovers(
    start_service: StartService,
    detect_service: ServiceProcess,
    tmp_path: Path,
    photo: Photo,
) -> None:
    embed = start_service("embed")
    service = start_service("score", **score_env(detect_service, embed, tmp_path, None))
    client = Client(service)
    assert embed.stop() == 0
    # Fails fast: UNAVAILABLE naming embed, not a wait that runs into the deadline.
    with pytest.raises(grpc.RpcError) as raised:
        client.Analyze(
            score_pb2.AnalyzeRequest(image=jpeg_variant(photo("gdp.jpg"), 61)), timeout=60
        )
    assert reason_of(raised.value) == "dependency_unavailable"
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # The dependency is named; its address and gRPC's transport message stay in the log.
    assert re.fullmatch(r"embed is unavailable \([A-Z_]+\)", raised.value.details() or "")
    embed.start()
    embed.wait_serving()
    replies: list[score_pb2.AnalyzeResponse] = []

    def analyzed() -> bool:
        with contextlib.suppress(grpc.RpcError):  # until score's channel reconnects
            replies.append(
                client.Analyze(
                    score_pb2.AnalyzeRequest(image=jpeg_variant(photo("gdp.jpg"), 62)), timeout=60
                )
            )
        return bool(replies)

    wait_until("score to recover after embed came back", analyzed)
    assert len(replies[0].faces) == 5


def test_enroll_a_chosen_face(score: Client, gallery: str, photo: Photo) -> None:
    analysis = score.Analyze(score_pb2.AnalyzeRequest(image=photo("t1.jpg")))
    chosen = enroll(score, gallery, "third", photo("t1.jpg"), face_index=2)
    assert chosen.face.index == 2 and chosen.face.box == analysis.faces[2].box
    other = enroll(score, gallery, "first", photo("t1.jpg"), face_index=0)
    assert other.face_id != chosen.face_id
    with pytest.raises(grpc.RpcError) as raised:
        enroll(score, gallery, "x", photo("t1.jpg"), face_index=6)
    assert reason_of(raised.value) == "invalid_argument"
    assert "face_index" in (raised.value.details() or "")
    reply = score.Identify(score_pb2.IdentifyRequest(gallery=gallery, image=photo("t1.jpg")))
    assert [f.subject_id for f in reply.faces][:3] == ["first", "", "third"]


def test_health_report_names_every_dependency(score: Client) -> None:
    report = score.GetHealth(score_pb2.GetHealthRequest())
    states = {d.name: d.ok for d in report.dependencies}
    assert report.ok
    assert states == {"score": True, "detect": True, "embed": True, "qdrant": True, "cache": True}
