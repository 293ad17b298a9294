"""The decode workers' functions, run in this process: what they send back to detect; and a
worker's memory between photos."""

from __future__ import annotations

import mmap
import multiprocessing
import resource

import numpy as np
import pytest
from insightface.utils import face_align

from facescore.devtools.phone_photos import phone_photos
from services.common.decode_workers import (
    DecodeLimits,
    DecodeWorkers,
    _receive_answer,
    _send_answer,
    decode_crops,
    decode_for_detection,
    decode_regions,
)
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
    gdp_12mp: bytes,
) -> None:
    """The decode a worker sends back equals the decode in this process, call after call
    (each answer overwrites the last in the shared memory)."""
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
