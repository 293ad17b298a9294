"""A large JPEG decoded whole on an idle worker while the detector runs: the faces it is
needed for get the crops the finer decode would give, and every worker comes back to the
pool, whether the whole decode was needed, not needed, or its request was cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from facescore.devtools.phone_photos import phone_photos
from services.common import decode_workers
from services.common.decode_workers import DecodeLimits, DecodeWorkers
from services.common.metrics import DECODES_AHEAD
from services.detect import pipeline
from services.detect.detector import FaceDetector
from services.detect.pipeline import DetectOptions, DetectPipeline
from services.detect.settings import DetectSettings

LIMITS = DecodeLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000, max_jpeg_scans=100)
OPTIONS = DetectOptions(threshold=0.5, max_faces=100, min_size=0, include_crops=True)
WORKERS = 2


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    detector = FaceDetector(DetectSettings())
    detector.load()
    return detector


@pytest.fixture
async def workers() -> AsyncIterator[DecodeWorkers]:
    pool = DecodeWorkers(WORKERS, budget_s=5.0)
    pool.start()
    await pool.warm_up()
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {p.name.split(".")[0]: p.data for p in phone_photos(("JPEG",))}


def _pipeline(detector: FaceDetector, workers: DecodeWorkers, ahead: bool) -> DetectPipeline:
    return DetectPipeline(
        detector,
        workers,
        ThreadPoolExecutor(1),
        LIMITS,
        fit=640,
        inline_pixels=4_000_000,
        decode_ahead=ahead,
    )


def _counted(outcome: str) -> float:
    return float(DECODES_AHEAD.labels(outcome)._value.get())


async def _all_back(workers: DecodeWorkers) -> None:
    """Waits for the pool to hold every worker again, alive."""
    for _ in range(200):
        if workers._idle.qsize() == WORKERS and not workers._replacing:
            break
        await asyncio.sleep(0.05)
    assert workers._idle.qsize() == WORKERS
    assert all(w.process.is_alive() for w in list(workers._idle._queue))  # type: ignore[attr-defined]


@pytest.fixture
def idle_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core runs nothing, whatever else runs beside these tests."""
    monkeypatch.setattr(pipeline, "idle_cores", lambda: 1)


@pytest.mark.usefixtures("idle_core")
@pytest.mark.parametrize("name", ["gdp", "players"])
async def test_crops_from_the_whole_decode_ahead_are_those_of_the_finer_decode(
    detector: FaceDetector, workers: DecodeWorkers, photos: dict[str, bytes], name: str
) -> None:
    """gdp's and players' small faces need a full-size decode: cut from the whole decode made
    ahead of need, or losslessly from the JPEG after detection, the pixels are the same."""
    plain = await _pipeline(detector, workers, ahead=False).run(photos[name], OPTIONS)
    await _all_back(workers)
    used = _counted("used")
    ahead = await _pipeline(detector, workers, ahead=True).run(photos[name], OPTIONS)
    assert _counted("used") == used + 1
    assert len(ahead.faces) == len(plain.faces) >= 5
    for with_ahead, without in zip(ahead.faces, plain.faces, strict=True):
        assert with_ahead.box == without.box
        assert with_ahead.crop.bgr == without.crop.bgr
    await _all_back(workers)


@pytest.mark.usefixtures("idle_core")
async def test_a_whole_decode_no_face_needs_returns_its_worker(
    detector: FaceDetector, workers: DecodeWorkers, photos: dict[str, bytes]
) -> None:
    unused = _counted("unused")
    for _ in range(3):
        response = await _pipeline(detector, workers, ahead=True).run(photos["yaoming"], OPTIONS)
        assert len(response.faces) == 1
        await _all_back(workers)
    assert _counted("unused") == unused + 3


@pytest.mark.usefixtures("idle_core")
async def test_a_cancelled_request_returns_both_its_workers(
    detector: FaceDetector, workers: DecodeWorkers, photos: dict[str, bytes]
) -> None:
    ahead = _pipeline(detector, workers, ahead=True)
    for delay in (0.005, 0.05, 0.1):
        call = asyncio.create_task(ahead.run(photos["players"], OPTIONS))
        await asyncio.sleep(delay)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await _all_back(workers)
    # The pool serves as before.
    response = await ahead.run(photos["gdp"], OPTIONS)
    assert len(response.faces) >= 5
    await _all_back(workers)


async def test_no_decode_ahead_beside_another_photo_or_without_an_idle_core(
    detector: FaceDetector,
    workers: DecodeWorkers,
    photos: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ahead = _pipeline(detector, workers, ahead=True)
    ahead._in_flight = 1  # as inside run(), this photo alone
    jpeg = photos["gdp"]
    monkeypatch.setattr(pipeline, "idle_cores", lambda: 1)
    assert ahead._may_decode_ahead(jpeg)
    assert not ahead._may_decode_ahead(b"\x89PNG\r\n\x1a\n" + jpeg[8:])  # decoded whole anyway
    assert not _pipeline(detector, workers, ahead=False)._may_decode_ahead(jpeg)
    ahead._in_flight = 2
    assert not ahead._may_decode_ahead(jpeg)
    ahead._in_flight = 1
    monkeypatch.setattr(pipeline, "idle_cores", lambda: 0)
    assert not ahead._may_decode_ahead(jpeg)


def test_idle_cores_are_counted_from_the_kernel() -> None:
    usable = decode_workers.usable_cores()
    assert usable >= 1
    # This thread runs while it counts, so at most all but one core are idle.
    assert 0 <= decode_workers.idle_cores() <= usable - 1
