"""The decode workers' functions, run in this process: what they send back to detect; and a
worker's memory between photos."""

from __future__ import annotations

import asyncio
import io
import mmap
import multiprocessing
import os
import resource
import time

import numpy as np
import pytest
from insightface.utils import face_align
from PIL import Image

from facescore.devtools.phone_photos import phone_photos
from services.common import decode_workers
from services.common.decode_workers import (
    DecodeLimits,
    DecodeWorkers,
    _receive_answer,
    _send_answer,
    decode_crops,
    decode_finer,
    decode_for_detection,
    decode_regions,
)
from services.common.errors import FaceScoreError, Reason
from services.common.images import decode_image

LIMITS = DecodeLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000, max_jpeg_scans=100)


@pytest.fixture(scope="module")
def gdp_12mp() -> bytes:
    """A 12 MP JPEG stored turned (EXIF orientation 6), as phones store portrait photos."""
    return next(p.data for p in phone_photos(("JPEG",)) if p.name.startswith("gdp"))


# Two faces of the 12 MP gdp photo: their landmarks, and boxes holding all each crop is warped
# from (about 3.2 eye distances across).
LANDMARKS = [
    np.array([[1200, 1400], [1400, 1400], [1300, 1500], [1220, 1600], [1380, 1600]], np.float32),
    np.array([[290, 2640], [410, 2640], [350, 2700], [300, 2770], [400, 2770]], np.float32),
]
BOXES = [(800.0, 1000.0, 1800.0, 2000.0), (50.0, 2400.0, 650.0, 3000.0)]


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_crops_cut_in_the_worker_are_those_of_its_regions(gdp_12mp: bytes, scale: float) -> None:
    """Only 112x112 crops cross the pipe; they are the crops detect would warp from the
    regions, and at full size those of the whole decode."""
    small = decode_for_detection(gdp_12mp, LIMITS, 640)
    assert small.scale == (0.25, 0.25)
    landmarks, boxes = LANDMARKS, BOXES
    crops = decode_crops(LIMITS, scale, boxes, landmarks, 112)
    regions = decode_regions(LIMITS, scale, boxes)
    whole = decode_image(gdp_12mp, LIMITS.max_bytes, LIMITS.max_pixels)
    for crop, region, marks in zip(crops, regions, landmarks, strict=True):
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8 and crop.flags.c_contiguous
        local = ((marks - region.origin) * region.scale).astype(np.float32)
        assert np.array_equal(crop, face_align.norm_crop(region.bgr, local, 112))
        if scale == 1.0:
            # The same pixels as the whole decode, warped by the same transform up to rounding.
            reference = face_align.norm_crop(whole.bgr, marks, 112).astype(np.int16)
            difference = np.abs(crop.astype(np.int16) - reference)
            assert difference.max() <= 1 and difference.mean() < 0.05


def test_crops_from_the_finer_decode_made_ahead_are_those_of_a_cut(
    gdp_12mp: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole photo decoded at 1/2 ahead gives the crops a lossless cut at 1/2 gives, with
    no cut; faces that need full size are still cut at full size."""
    cut_scales: list[float] = []
    cut = decode_workers.decode_boxes

    def counted(*args: object, **kwargs: float) -> object:
        cut_scales.append(kwargs["min_scale"])
        return cut(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_workers, "decode_boxes", counted)
    decode_for_detection(gdp_12mp, LIMITS, 640)
    from_cut = decode_crops(LIMITS, 0.5, BOXES, LANDMARKS, 112)
    assert cut_scales == [0.5]
    assert decode_finer(LIMITS, 0.5)
    regions = decode_regions(LIMITS, 0.5, BOXES)
    from_whole = decode_crops(LIMITS, 0.5, BOXES, LANDMARKS, 112)
    assert cut_scales == [0.5]  # no cut: both came from the decode made ahead
    assert [r.scale for r in regions] == [(0.5, 0.5)] * 2
    for crop, reference in zip(from_whole, from_cut, strict=True):
        assert np.abs(crop.astype(np.int16) - reference).max() <= 1
    assert [r.scale for r in decode_regions(LIMITS, 1.0, BOXES)] == [(1.0, 1.0)] * 2
    assert cut_scales == [0.5, 1.0]
    decode_for_detection(gdp_12mp, LIMITS, 640)  # the next photo forgets the last one's
    decode_regions(LIMITS, 0.5, BOXES)
    assert cut_scales == [0.5, 1.0, 0.5]


def test_a_photo_decoded_at_full_size_has_no_finer_decode() -> None:
    """Formats without DCT scaling keep their full-size decode for the crops already."""
    buffer = io.BytesIO()
    Image.new("RGB", (2400, 1800), (120, 90, 60)).save(buffer, "PNG")
    small = decode_for_detection(buffer.getvalue(), LIMITS, 640)
    assert max(small.scale) < 0.5  # shrunk from the full-size decode for the detector
    assert not decode_finer(LIMITS, 0.5)
    assert [r.scale for r in decode_regions(LIMITS, 0.5, BOXES[:1])] == [(1.0, 1.0)]


def burn_cpu(seconds: float) -> None:
    """Spends `seconds` of CPU time (run in a decode worker)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


async def test_a_call_ahead_runs_while_the_request_goes_on() -> None:
    """`start` returns at once; the session's next call waits for the call ahead; a session
    that ends with a call still ahead hands its worker to the next request only once that
    call is done, and the worker is kept, not replaced."""
    workers = DecodeWorkers(1, budget_s=30.0)
    workers.start()
    try:
        async with workers.session() as session:
            started = time.perf_counter()
            ahead = session.start(time.sleep, 0.4)
            assert time.perf_counter() - started < 0.1
            pid = await session.call(os.getpid)
            assert ahead.done() and time.perf_counter() - started >= 0.4
        async with workers.session() as session:
            session.start(time.sleep, 0.4)
            started = time.perf_counter()
        assert time.perf_counter() - started < 0.1  # the request is not held up
        async with workers.session() as session:  # the only worker, once it has slept
            assert time.perf_counter() - started >= 0.4
            assert await session.call(os.getpid) == pid
    finally:
        workers.stop()


async def test_a_failed_request_stops_its_call_ahead() -> None:
    """A request that fails or is cancelled with a call still ahead ends that call with its
    worker (a fresh one takes its place), instead of leaving the decode to finish."""
    workers = DecodeWorkers(1, budget_s=30.0)
    workers.start()
    try:
        async with workers.session() as session:
            pid = await session.call(os.getpid)
        with pytest.raises(ValueError):
            async with workers.session() as session:
                ahead = session.start(time.sleep, 30)
                await asyncio.sleep(0.1)
                raise ValueError("the request failed")
        started = time.perf_counter()
        async with workers.session() as session:
            assert await session.call(os.getpid) != pid
        assert time.perf_counter() - started < 20
        assert ahead.cancelled()
    finally:
        workers.stop()


async def test_a_call_ahead_over_budget_refuses_the_next_call() -> None:
    """The budget holds for a call ahead: the request's next call gets the decode's refusal,
    not a broken pipe, and the worker is replaced."""
    workers = DecodeWorkers(1, budget_s=1.0)
    workers.start()
    try:
        async with workers.session() as session:
            pid = await session.call(os.getpid)
        with pytest.raises(FaceScoreError) as refused:
            async with workers.session() as session:
                session.start(burn_cpu, 5.0)
                await session.call(os.getpid)
        assert refused.value.reason == Reason.IMAGE_TOO_COMPLEX
        async with workers.session() as session:
            assert await session.call(os.getpid) != pid
    finally:
        workers.stop()


def minor_faults() -> int:
    """Pages this process has faulted in so far (run in a decode worker)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def test_a_worker_keeps_the_memory_of_a_full_size_cut_for_the_next_photo(
    gdp_12mp: bytes,
) -> None:
    """A lossless cut reads the photo's coefficients into 37 MB, freed together: a real
    worker keeps them for its next photo instead of faulting 9,000 pages in afresh."""
    workers = DecodeWorkers(1, budget_s=30.0)
    workers.start()
    try:
        faults = []
        async with workers.session() as worker:
            for _ in range(3):
                await worker.call(decode_for_detection, gdp_12mp, LIMITS, 640)
                before = await worker.call(minor_faults)
                await worker.call(decode_crops, LIMITS, 1.0, BOXES, LANDMARKS, 112)
                faults.append(await worker.call(minor_faults) - before)
        assert faults[0] > 5000, faults  # the first cut faults its coefficients in
        assert max(faults[1:]) < 2000, faults
    finally:
        workers.stop()


def test_answer_arrays_pass_through_shared_memory_and_past_its_end_through_the_pipe() -> None:
    """An answer's arrays are copied into the memory both ends map, not pickled into the pipe;
    one that does not fit takes the pipe. Either way the parent gets writable copies, which
    the worker's next answer does not change."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (756, 1008, 3), dtype=np.uint8)  # a 12 MP photo at 1/4
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    shared = mmap.mmap(-1, image.nbytes + 2 * crops[0].nbytes)  # the last crop will not fit
    parent, child = multiprocessing.Pipe()
    try:
        _send_answer(child, shared, ("ok", {"image": image, "crops": crops}))
        kind, value = _receive_answer(parent, shared)
        assert kind == "ok"
        # The image went through the shared memory, the first crops after it.
        assert shared[: image.nbytes] == image.tobytes()
        assert shared[image.nbytes : image.nbytes + crops[0].nbytes] == crops[0].tobytes()
        assert not parent.poll()  # nothing left in the pipe
        shared[:] = bytes(len(shared))  # the worker's next answer
        assert np.array_equal(value["image"], image)
        for got, sent in zip(value["crops"], crops, strict=True):
            assert np.array_equal(got, sent)
        assert value["image"].flags.writeable and value["crops"][2].flags.writeable
        value["image"][0, 0] = 1
    finally:
        parent.close()
        child.close()
        shared.close()


async def test_a_real_worker_answers_the_detector_image_through_shared_memory(
    gdp_12mp: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    """The decode a worker sends back equals the decode in this process, call after call
    (each answer overwrites the last in the shared memory). The worker writes nothing to
    stderr: a library's deprecation warning from aligning the crops would reach the
    operator's log outside its structured lines."""
    workers = DecodeWorkers(1, budget_s=30.0)
    workers.start()
    try:
        async with workers.session() as worker:
            first = await worker.call(decode_for_detection, gdp_12mp, LIMITS, 640)
            crops = await worker.call(decode_crops, LIMITS, 0.5, BOXES, LANDMARKS, 112)
        here = decode_for_detection(gdp_12mp, LIMITS, 640)
        assert np.array_equal(first.bgr, here.bgr) and first.sha256 == here.sha256
        assert [c.shape for c in crops] == [(112, 112, 3)] * 2
        assert np.array_equal(crops[0], decode_crops(LIMITS, 0.5, BOXES, LANDMARKS, 112)[0])
    finally:
        workers.stop()
    assert capfd.readouterr().err == ""
