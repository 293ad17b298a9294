"""The embed service over gRPC on loopback, fed by the real detect service."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import urllib.request
from collections.abc import Callable

import cv2
import grpc
import numpy as np
import pytest
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align
from PIL import Image, ImageOps

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.errors import reason_of
from services.common.models import file_sha256, select_model, vectron_file
from services.common.settings import DEFAULT_MODEL_DIR
from tests.conftest import ServiceProcess, wait_until


def crops_of(detect_service: ServiceProcess, image: bytes) -> list[common_pb2.AlignedCrop]:
    with grpc.insecure_channel(detect_service.address) as channel:
        response = detect_pb2_grpc.DetectServiceStub(channel).Detect(
            detect_pb2.DetectRequest(image=image, include_crops=True), timeout=30
        )
    return [face.crop for face in response.faces]


def embed(service: ServiceProcess, crops: list[common_pb2.AlignedCrop]) -> np.ndarray:
    with grpc.insecure_channel(service.address) as channel:
        response = embed_pb2_grpc.EmbedServiceStub(channel).Embed(
            embed_pb2.EmbedRequest(crops=crops), timeout=30
        )
    return np.array([e.values for e in response.embeddings], dtype=np.float32)


def model_runs(service: ServiceProcess) -> float:
    with urllib.request.urlopen(service.metrics_url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(v) for v in re.findall(r"^facescore_model_runs_total\{[^}]*\} (\S+)$", text, re.M)
    )


def test_embeddings_are_unit_vectors(
    detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    vectors = embed(embed_service, crops_of(detect_service, photo("t1.jpg")))
    assert vectors.shape == (6, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_yao_ming_is_found_among_the_players(
    detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    probe = embed(embed_service, crops_of(detect_service, photo("yaoming.jpg")))[0]
    players = embed(embed_service, crops_of(detect_service, photo("players.jpg")))
    assert players.shape[0] == 22
    similarity = players @ probe
    best = int(np.argmax(similarity))
    assert similarity[best] >= 0.5
    assert np.all(np.delete(similarity, best) < 0.3)


def test_matches_plain_insightface(
    detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    detector = SCRFD(model_file=str(vectron_file("scrfd_500m_bnkps.onnx")))
    detector.prepare(0, input_size=(640, 640))
    recognizer = ArcFaceONNX(model_file=str(vectron_file("w600k_mbf.onnx")))
    for name in ("t1.jpg", "players.jpg"):
        data = photo(name)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _, landmarks = detector.detect(image, input_size=(640, 640))
        reference = np.array(
            [recognizer.get_feat(face_align.norm_crop(image, lm)).ravel() for lm in landmarks]
        )
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        ours = embed(embed_service, crops_of(detect_service, data))
        # Faces come back in another order; pair each reference face with its best match.
        similarity = reference @ ours.T
        assert np.all(similarity.max(axis=1) >= 0.999), name


def test_flipped_and_reencoded_faces_stay_similar(
    detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    for name in ("yaoming.jpg", "gdp.jpg"):
        original = Image.open(io.BytesIO(photo(name))).convert("RGB")
        faces = embed(embed_service, crops_of(detect_service, photo(name)))
        for variant in (ImageOps.mirror(original), original):
            buffer = io.BytesIO()
            variant.save(buffer, "JPEG", quality=75)
            copies = embed(embed_service, crops_of(detect_service, buffer.getvalue()))
            assert len(copies) >= 1
            # Faces may come back in another order: pair each copy with its most similar face.
            assert np.all((copies @ faces.T).max(axis=1) >= 0.8), name


async def test_concurrent_calls_share_model_runs(
    detect_service: ServiceProcess, embed_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    crops = crops_of(detect_service, photo("players.jpg"))[:16]
    sequential = np.stack([embed(embed_service, [crop])[0] for crop in crops])
    runs_before = model_runs(embed_service)
    async with grpc.aio.insecure_channel(embed_service.address) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        replies = await asyncio.gather(
            *(stub.Embed(embed_pb2.EmbedRequest(crops=[crop]), timeout=30) for crop in crops)
        )
    runs = model_runs(embed_service) - runs_before
    concurrent = np.array([reply.embeddings[0].values for reply in replies], dtype=np.float32)
    np.testing.assert_allclose(concurrent, sequential, atol=1e-4)
    assert 1 <= runs < len(crops)


async def test_full_queue_answers_resource_exhausted(
    start_service: Callable[..., ServiceProcess],
    detect_service: ServiceProcess,
    photo: Callable[[str], bytes],
) -> None:
    service = start_service(
        "embed", EMBED_MAX_QUEUE="4", EMBED_MAX_BATCH="2", EMBED_MAX_BATCH_DELAY_MS="0"
    )
    crops = crops_of(detect_service, photo("players.jpg"))[:2]
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        results = await asyncio.gather(
            *(stub.Embed(embed_pb2.EmbedRequest(crops=crops), timeout=30) for _ in range(40)),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    answered = [r for r in results if isinstance(r, embed_pb2.EmbedResponse)]
    assert refused and answered and len(refused) + len(answered) == 40
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(error) == "queue_full"
    assert len(embed(service, crops)) == 2  # and it keeps serving


@pytest.mark.parametrize(
    ("crop", "reason"),
    [
        (common_pb2.AlignedCrop(width=64, height=64, bgr=b"\x00" * 64 * 64 * 3), "invalid_crop"),
        (common_pb2.AlignedCrop(width=112, height=112, bgr=b"\x00" * 100), "invalid_crop"),
    ],
)
def test_bad_crops_are_invalid_argument(
    embed_service: ServiceProcess, crop: common_pb2.AlignedCrop, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(embed_service, [crop])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(raised.value) == reason


def test_too_many_crops_in_one_call(embed_service: ServiceProcess) -> None:
    crop = common_pb2.AlignedCrop(width=112, height=112, bgr=b"\x00" * 112 * 112 * 3)
    with pytest.raises(grpc.RpcError) as raised:
        embed(embed_service, [crop] * 129)
    assert reason_of(raised.value) == "too_many_crops"


def test_empty_call_returns_no_embeddings(embed_service: ServiceProcess) -> None:
    assert embed(embed_service, []).shape[0] == 0


def test_model_identity(embed_service: ServiceProcess) -> None:
    with grpc.insecure_channel(embed_service.address) as channel:
        info = embed_pb2_grpc.EmbedServiceStub(channel).GetModelInfo(
            common_pb2.GetModelInfoRequest(), timeout=5
        )
    spec = select_model(DEFAULT_MODEL_DIR, "recognizer")
    assert (info.name, info.role, info.embedding_dim) == (spec.name, "recognizer", 512)
    # The identity is the manifest's, and the file served is the one the manifest names.
    assert info.sha256 == spec.sha256 == file_sha256(spec.path(DEFAULT_MODEL_DIR))
    assert list(info.providers) == ["CPUExecutionProvider"]


async def test_sigterm_lets_the_call_in_flight_finish(
    start_service: Callable[..., ServiceProcess],
    detect_service: ServiceProcess,
    photo: Callable[[str], bytes],
) -> None:
    # A long batch delay holds the call inside the service when SIGTERM arrives; the grace
    # period outlasts it.
    service = start_service("embed", EMBED_MAX_BATCH_DELAY_MS="3000", EMBED_GRACE_PERIOD_S="30")
    crops = crops_of(detect_service, photo("yaoming.jpg"))
    async with grpc.aio.insecure_channel(service.address) as channel:
        call = embed_pb2_grpc.EmbedServiceStub(channel).Embed(
            embed_pb2.EmbedRequest(crops=crops), timeout=60
        )
        # The crop waits in the batcher's queue: the call is inside the service.
        await asyncio.to_thread(
            wait_until,
            "the crop to reach the queue",
            lambda: service.metric("facescore_queue_depth") == 1,
        )
        assert not call.done()
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        reply = await call
    assert len(reply.embeddings) == 1
    assert service.process.wait(60) == 0
