"""12 MP phone photos decoded at the detector's scale give the faces and embeddings of a
full-size decode: boxes and landmarks in the photo's own pixels, EXIF orientation applied."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from facescore.devtools.phone_photos import ROTATED_90, encode, phone_frame, sample_sources
from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.decode_workers import DecodeLimits, DecodeWorkers
from services.common.images import decode_image
from services.detect.detector import FaceDetector, align
from services.detect.pipeline import (
    COARSE_MAGNIFICATION,
    FINE_MAGNIFICATION,
    DetectOptions,
    DetectPipeline,
    finer_scale,
    max_magnification,
)
from services.detect.settings import DetectSettings
from tests.conftest import ServiceProcess

LIMITS = (20 * 1024 * 1024, 40_000_000)
# Faces this big or bigger: the scaled path must give the embedding of the full-size decode.
FULL_DETAIL_PX = 112


@pytest.fixture(scope="module")
def full_size_detector() -> FaceDetector:
    detector = FaceDetector(DetectSettings())
    detector.load()
    return detector


def _detect(service: ServiceProcess, data: bytes) -> detect_pb2.DetectResponse:
    with grpc.insecure_channel(service.address) as channel:
        stub = detect_pb2_grpc.DetectServiceStub(channel)
        return stub.Detect(detect_pb2.DetectRequest(image=data, include_crops=True), timeout=60)


def _embed(service: ServiceProcess, crops: list[bytes]) -> np.ndarray:
    with grpc.insecure_channel(service.address) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        request = embed_pb2.EmbedRequest(
            crops=[common_pb2.AlignedCrop(width=112, height=112, bgr=c) for c in crops]
        )
        reply = stub.Embed(request, timeout=60)
    return np.array([list(e.values) for e in reply.embeddings])


def _compare(
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    detector: FaceDetector,
    data: bytes,
    size: tuple[int, int],
) -> int:
    """Asserts the scaled path matches the full one; returns how many faces were compared.

    The detector sees a 640-pixel image either way, resized from a different decode, so its
    landmarks move by a pixel or two at that scale: a few pixels in the photo, enough to turn
    embeddings by up to 0.02 cosine, whatever the decode. So landmarks are compared with a
    tolerance, and crops with the same landmarks: that is what the decode scale changes.
    """
    response = _detect(detect_service, data)
    assert (response.image.width, response.image.height) == size
    full = decode_image(data, *LIMITS)
    reference = detector.detect(full.bgr, 0.5)
    assert len(response.faces) == len(reference)
    ours = [np.array([[p.x, p.y] for p in f.landmarks], np.float32) for f in response.faces]
    full_crops = [align(full.bgr, landmarks).tobytes() for landmarks in ours]
    ours_vectors = _embed(embed_service, [f.crop.bgr for f in response.faces])
    full_vectors = _embed(embed_service, full_crops)
    compared = 0
    for face in reference:
        j = int(np.argmin([np.abs(landmarks - face.landmarks).max() for landmarks in ours]))
        # Landmarks in the photo's own pixels, EXIF orientation applied.
        assert np.abs(ours[j] - face.landmarks).max() <= 0.04 * face.shorter_side
        box = response.faces[j].box
        assert np.abs([box.x1, box.y1, box.x2, box.y2] - face.box).max() <= 0.06 * max(
            face.shorter_side, 50
        )
        if face.shorter_side >= FULL_DETAIL_PX:
            cosine = float(ours_vectors[j] @ full_vectors[j])
            assert cosine >= 0.99, (face.shorter_side, cosine)
            compared += 1
    return compared


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("yaoming.jpg", "JPEG"),
        ("gdp.jpg", "JPEG"),
        ("t1.jpg", "JPEG"),
        ("t1.jpg", "HEIF"),
        ("yaoming.jpg", "HEIF"),
    ],
)
def test_phone_photo_matches_the_full_size_decode(
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    full_size_detector: FaceDetector,
    name: str,
    fmt: str,
) -> None:
    """JPEG by DCT scaling; HEIC, which cannot scale, shrunk from the full decode of its
    grid of tiles, a portrait one turned by its EXIF orientation. gdp's smallest face is
    cropped from about 124 pixels of a 1/2 decode, near that scale's bar."""
    with Image.open(sample_sources()[name][0]) as source:
        frame = phone_frame(source)
    # Portrait frames are stored turned, with EXIF orientation 6, as phones store them.
    orientation = ROTATED_90 if frame.height > frame.width else 1
    data = encode(frame, fmt, orientation)
    compared = _compare(detect_service, embed_service, full_size_detector, data, frame.size)
    assert compared >= 1


@pytest.fixture(scope="module")
def small_faces_12mp() -> bytes:
    """t1's faces at their own size on a 12 MP frame: 1/4 scale would leave them ~30 px."""
    canvas = Image.new("RGB", (4032, 3024), (90, 100, 110))
    with Image.open(sample_sources()["t1.jpg"][0]) as source:
        canvas.paste(source.convert("RGB").resize((2560, 1772)), (700, 600))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_small_faces_are_cropped_from_a_finer_decode(
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    full_size_detector: FaceDetector,
    small_faces_12mp: bytes,
) -> None:
    """One call at a time: the finer decode is made while the detector runs."""
    compared = _compare(
        detect_service, embed_service, full_size_detector, small_faces_12mp, (4032, 3024)
    )
    assert compared >= 3


@pytest.fixture
async def decoders() -> AsyncIterator[DecodeWorkers]:
    workers = DecodeWorkers(2, budget_s=30.0)
    workers.start()
    await workers.warm_up()
    yield workers
    workers.stop()


def _decodes_ahead(outcome: str) -> float:
    return REGISTRY.get_sample_value("facescore_decodes_ahead_total", {"outcome": outcome}) or 0


async def test_a_lone_large_jpeg_is_decoded_finer_while_the_detector_runs(
    full_size_detector: FaceDetector, decoders: DecodeWorkers, small_faces_12mp: bytes
) -> None:
    """Alone in detect with a core spare, the 12 MP photo is decoded at 1/2 beside the detector,
    and its small faces' crops are those of the cut made after the detector. With no core
    spare, with two photos in flight, or with decode_ahead off, none is decoded ahead."""
    settings = DetectSettings()
    limits = DecodeLimits(*LIMITS, settings.max_jpeg_scans)
    options = DetectOptions(0.5, 100, 0, include_crops=True)
    with ThreadPoolExecutor(2) as threads:

        def pipeline(ahead: bool, spare: int) -> DetectPipeline:
            # The spare cores are given, not read: other processes on a test machine come and go.
            return DetectPipeline(
                full_size_detector,
                decoders,
                threads,
                limits,
                settings.input_size,
                settings.inline_decode_pixels,
                decode_ahead=ahead,
                spare=lambda: spare,
            )

        used, skipped = _decodes_ahead("used"), _decodes_ahead("machine_busy")
        alone = await pipeline(True, spare=1).run(small_faces_12mp, options)
        assert _decodes_ahead("used") == used + 1
        off = await pipeline(False, spare=1).run(small_faces_12mp, options)
        busy = await pipeline(True, spare=-1).run(small_faces_12mp, options)
        assert _decodes_ahead("machine_busy") == skipped + 1
        together = pipeline(True, spare=1)
        both = await asyncio.gather(*(together.run(small_faces_12mp, options) for _ in range(2)))
        assert _decodes_ahead("used") == used + 1
    assert len(alone.faces) >= 3
    for response in (off, busy, *both):
        assert len(response.faces) == len(alone.faces)
        for ours, theirs in zip(alone.faces, response.faces, strict=True):
            assert ours.landmarks == theirs.landmarks
            difference = np.abs(
                np.frombuffer(ours.crop.bgr, np.uint8).astype(np.int16)
                - np.frombuffer(theirs.crop.bgr, np.uint8)
            )
            assert difference.max() <= 1


@pytest.mark.parametrize(
    ("magnification", "scale"),
    [
        (0.05, 1 / 8),
        (0.1, 1 / 4),
        (0.1875, 1 / 4),
        (0.19, 1 / 2),
        (0.45, 1 / 2),
        (0.5, 1 / 2),
        (0.51, 1.0),
        (3.0, 1.0),
    ],
)
def test_a_finer_decode_is_the_smallest_scale_with_enough_pixels(
    magnification: float, scale: float
) -> None:
    """Below 1/2 a crop needs 150 source pixels (libjpeg's 2x2 inverse DCT blurs), from 1/2
    on 112: gdp's smallest face (0.45 crop pixels per photo pixel) needs 1/2, not a full
    decode."""
    assert max_magnification(1 / 4) == COARSE_MAGNIFICATION < FINE_MAGNIFICATION
    assert max_magnification(1 / 2) == max_magnification(1.0) == FINE_MAGNIFICATION
    assert finer_scale(magnification) == scale
