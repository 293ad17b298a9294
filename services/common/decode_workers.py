"""Photo decoding in worker processes, each call within a CPU-time budget.

A decode runs in C and cannot be interrupted from Python: a hostile photo decoded in a thread
holds that thread until libjpeg (or libheif, libpng, ...) is done, whatever happened to the call
that asked. In a process it can be ended: the kernel stops a worker that spends more CPU
seconds than the budget on one call (RLIMIT_CPU), and a call cancelled by its client kills its
worker; a fresh one takes its place. The budget counts CPU time, not wall time, so a busy
machine slows decodes without failing them.

A request holds one worker for all its decodes (`session`): the worker keeps the photo it
decoded last, so cropping faces from the full-size pixels of a format without DCT scaling
does not decode it twice. A request may start a decode ahead (`DecodeSession.start`) and go
on while it runs, a finer decode of a JPEG while the detector looks at the coarse one; the
session's calls still reach the worker one at a time, and the worker serves no other request
before that decode is done.

Answers come back through memory both processes map, not through the pipe: a 12 MP photo's
detector image (1008x756, 2.3 MB) came back from a worker in 6.0 ms pickled through the pipe
and in 1.6 ms copied through the mapping (the same probe before and after, 2026-12-02).
"""

from __future__ import annotations

import asyncio
import math
import mmap
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from services.common.align import norm_crop
from services.common.errors import FaceScoreError, Reason
from services.common.images import (
    JPEG_SCALES,
    DecodedImage,
    box_pixels,
    decode_boxes,
    decode_image,
    shrink,
)
from services.common.memory import retain_freed_memory

# Freed memory a decode worker keeps for its next photo: a 12 MP JPEG's coefficients, which
# the lossless cut of its faces reads, are 37 MB at 4:2:0 chroma (49 at 4:2:2) in three blocks
# freed together; kept to 32 MB, they went back to the kernel after every photo and were
# faulted in afresh on the next: 9,000 pages a photo (37.3 ms for gdp's cut in a worker, 28.3
# once they stayed, in two runs of one probe).
WORKER_RETAINED_BYTES = 64 * 1024 * 1024

# The memory a worker's answer buffers (arrays) pass through; a buffer that does not fit takes
# the pipe. Pages are allocated only where an answer has written: a 12 MP photo's detector
# image and its crops touch about 3 MB.
SHARED_ANSWER_BYTES = 32 * 1024 * 1024

# spawn, not fork: the parent runs gRPC and ONNX Runtime threads, which fork would copy mid-state.
_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int
    max_jpeg_scans: int


@dataclass(frozen=True, eq=False)
class Region:
    """A rectangle of the photo decoded at `scale` (decoded px per original px)."""

    bgr: npt.NDArray[np.uint8]
    origin: tuple[float, float]  # top-left corner, in original pixels
    scale: tuple[float, float]


@dataclass
class _Held:
    """The photo of this worker's current request: its bytes and, for formats without DCT
    scaling, its full-size decode, so the request's crops need neither sent nor decoded again."""

    data: bytes = b""
    full: DecodedImage | None = None
    finer: DecodedImage | None = None  # a JPEG's whole finer decode, made ahead (decode_finer)


_held = _Held()


def decode_for_detection(data: bytes, limits: DecodeLimits, fit: int) -> DecodedImage:
    """The photo at the smallest scale whose longer side keeps `fit` pixels."""
    global _held
    _held = _Held(data)
    decoded = _decode(data, limits, fit=fit)
    if decoded.scale != (1.0, 1.0):
        return decoded  # decoded small by DCT scaling
    _held.full = decoded  # the full decode is made anyway: keep it for the crops
    return shrink(decoded, fit)


def decode_finer(limits: DecodeLimits, scale: float) -> bool:
    """The whole photo `decode_for_detection` had, decoded at the DCT scale `scale` and kept
    for `decode_regions`; False, doing nothing, when it has no finer DCT scale (a photo
    decoded at full size keeps that decode already).

    Cutting the faces' regions losslessly reads every coefficient of the photo, and costs
    about what the whole decode at 1/2 costs (t1 at 12 MP: 26.4 against 23.4 ms): decoded
    while the detector runs, the whole decode leaves crops that cost only their warps."""
    if _held.full is not None or not _held.data:
        return False
    # fit=1: as small as DCT scaling goes while keeping `scale` of the original.
    _held.finer = _decode(_held.data, limits, fit=1, min_scale=scale)
    return True


def decode_regions(
    limits: DecodeLimits, min_scale: float, boxes: list[tuple[float, float, float, float]]
) -> list[Region]:
    """`boxes` (x1, y1, x2, y2 in original pixels) of the photo `decode_for_detection` had,
    cut from a decode of at least `min_scale`: the full-size decode or the finer one made
    ahead where they are fine enough, else a lossless cut of only the boxes."""
    decoded = _held.full
    if decoded is None and _held.finer is not None and min(_held.finer.scale) >= min_scale:
        decoded = _held.finer
    if decoded is None:
        # A JPEG: the smallest DCT scale that reaches min_scale, only the boxes converted.
        scale = next((s for s in JPEG_SCALES if s >= min_scale), 1.0)
        (sx, sy), cut = decode_boxes(
            _held.data,
            limits.max_bytes,
            limits.max_pixels,
            boxes,
            max_jpeg_scans=limits.max_jpeg_scans,
            min_scale=scale,
        )
        return [
            Region(bgr=pixels, origin=(left / sx, top / sy), scale=(sx, sy))
            for pixels, (left, top) in cut
        ]
    sx, sy = decoded.scale
    regions = []
    for box in boxes:
        left, top, right, bottom = box_pixels(box, (sx, sy), (decoded.width, decoded.height))
        pixels = np.ascontiguousarray(decoded.bgr[top:bottom, left:right])
        regions.append(Region(bgr=pixels, origin=(left / sx, top / sy), scale=(sx, sy)))
    return regions


def decode_crops(
    limits: DecodeLimits,
    min_scale: float,
    boxes: list[tuple[float, float, float, float]],
    landmarks: list[npt.NDArray[np.float32]],
    size: int,
) -> list[npt.NDArray[np.uint8]]:
    """Each face's aligned `size`x`size` crop, warped from its box (x1, y1, x2, y2) of a
    decode of at least `min_scale` by its five `landmarks` (original pixels).

    Cut here rather than in the caller, so that only the crops cross the pipe: the regions
    they are warped from are up to a hundred times larger (a 12 MP photo's 28 faces, 5 MB)."""
    crops = []
    for region, marks in zip(decode_regions(limits, min_scale, boxes), landmarks, strict=True):
        local = ((marks - region.origin) * region.scale).astype(np.float32)
        crops.append(norm_crop(region.bgr, local, size))
    return crops


def _decode(
    data: bytes, limits: DecodeLimits, fit: int | None = None, min_scale: float = 0.0
) -> DecodedImage:
    return decode_image(
        data,
        limits.max_bytes,
        limits.max_pixels,
        max_jpeg_scans=limits.max_jpeg_scans,
        fit=fit,
        min_scale=min_scale,
    )


def _ping() -> bool:
    return True


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _shared_memory() -> int:
    """A file descriptor of SHARED_ANSWER_BYTES of memory, for a worker's answers: a memfd
    where the system has them (Linux), else an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("facescore-decode-answers")
    else:
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, SHARED_ANSWER_BYTES)
    return fd


def _send_answer(
    conn: multiprocessing.connection.Connection, shared: mmap.mmap, answer: tuple[str, Any]
) -> None:
    """`answer` pickled with its arrays out of band: each array's bytes copied into `shared`
    (or, past its end, sent through the pipe), the rest and the places through the pipe."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(answer, protocol=5, buffer_callback=buffers.append)
    places, end = [], 0
    for buffer in buffers:
        with buffer.raw() as raw:
            if end + raw.nbytes <= len(shared):
                shared[end : end + raw.nbytes] = raw
                places.append((end, raw.nbytes))
                end += raw.nbytes
            else:
                places.append((-1, raw.nbytes))
    conn.send((head, places))
    for buffer, (start, _) in zip(buffers, places, strict=True):
        if start < 0:
            with buffer.raw() as raw:
                conn.send_bytes(raw)


def _receive_answer(conn: multiprocessing.connection.Connection, shared: mmap.mmap) -> Any:
    """An answer `_send_answer` sent; its arrays are copies, writable, and stay valid after
    the worker's next answer overwrites the shared memory."""
    head, places = conn.recv()
    buffers = []
    for start, size in places:
        buffer = bytearray(size)
        if start < 0:
            conn.recv_bytes_into(buffer)
        else:
            with memoryview(shared) as view:
                buffer[:] = view[start : start + size]
        buffers.append(buffer)
    return pickle.loads(head, buffers=buffers)


def _worker_main(conn: multiprocessing.connection.Connection, budget_s: float) -> None:
    """A worker's loop: run each function sent, answer its result or its refusal."""
    retain_freed_memory(keep=WORKER_RETAINED_BYTES)
    fd = reduction.recv_handle(conn)
    shared = mmap.mmap(fd, SHARED_ANSWER_BYTES)
    os.close(fd)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            function, args = conn.recv()
        except (EOFError, OSError):
            return
        # SIGXCPU, whose default action ends the process, once this call has used its budget.
        soft = math.ceil(_cpu_seconds() + budget_s)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard < 0 else min(soft, hard), hard))
        try:
            answer: tuple[str, Any] = ("ok", function(*args))
        except FaceScoreError as error:
            answer = ("refused", (str(error.reason), error.message, error.metadata))
        except Exception as error:  # Reported to the parent, which logs it as internal.
            answer = ("failed", f"{type(error).__name__}: {error}")
        _send_answer(conn, shared, answer)


class _Worker:
    def __init__(self, budget_s: float) -> None:
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_worker_main, args=(child, budget_s), daemon=True)
        fd = _shared_memory()
        try:
            self.shared = mmap.mmap(fd, SHARED_ANSWER_BYTES)
            self.process.start()
            child.close()
            reduction.send_handle(self.conn, fd, self.process.pid)
        finally:
            os.close(fd)

    def call(self, function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
        self.conn.send((function, args))
        try:
            answer: tuple[str, Any] = _receive_answer(self.conn, self.shared)
        except EOFError:
            self.process.join()
            if self.process.exitcode == -signal.SIGXCPU:
                return ("over_budget", None)
            raise
        return answer

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()
        self.shared.close()


class DecodeSession:
    """One request's decodes, on one worker."""

    def __init__(self, workers: DecodeWorkers, worker: _Worker) -> None:
        self.workers = workers
        self.worker = worker
        self.busy = False
        self.ahead: asyncio.Task[Any] | None = None

    def start(self, function: Callable[..., Any], *args: Any) -> asyncio.Task[Any]:
        """`function(*args)` started in the worker now, its answer awaited later (or never):
        the next `call` waits for it first, and the worker serves no other request before it
        is done. One call ahead at a time."""
        assert self.ahead is None or self.ahead.done(), "a call is already running ahead"
        self.ahead = asyncio.ensure_future(self.call(function, *args))
        return self.ahead

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in the worker, within the budget, once a call started ahead is
        done; refusals raise FaceScoreError.

        Cancelled (a deadline, a client gone), the call leaves `busy` set: the session kills
        the worker mid-decode.
        """
        ahead = self.ahead
        if ahead is not None and ahead is not asyncio.current_task():
            if not ahead.done():
                await asyncio.wait([ahead])  # its answer first: one call at a time on the pipe
            if self.busy:  # it ran over budget: the worker is gone
                raise _ahead_error(ahead)
        loop = asyncio.get_running_loop()
        self.busy = True
        kind, value = await loop.run_in_executor(
            self.workers.threads, self.worker.call, function, args
        )
        if kind == "over_budget":
            raise FaceScoreError(
                Reason.IMAGE_TOO_COMPLEX,
                f"decoding the image took more than {self.workers.budget_s} s of CPU time",
                metadata={"limit": str(self.workers.budget_s), "measure": "decode_cpu_seconds"},
            )
        self.busy = False
        if kind == "refused":
            reason, message, metadata = value
            raise FaceScoreError(
                Reason(reason), message, grpc.StatusCode.INVALID_ARGUMENT, metadata
            )
        if kind == "failed":
            raise RuntimeError(f"decode worker failed: {value}")
        return value


def _ahead_error(ahead: asyncio.Task[Any]) -> BaseException:
    """Why a call ahead left its worker unusable: its error, or its cancellation."""
    if ahead.cancelled():
        return asyncio.CancelledError()
    return ahead.exception() or RuntimeError("decode worker left busy")


class DecodeWorkers:
    """`count` worker processes; a request waits for a free one."""

    def __init__(self, count: int, budget_s: float) -> None:
        self.budget_s = budget_s
        # One thread per worker waits on its pipe, apart from the threads that run models.
        self.threads = ThreadPoolExecutor(count, thread_name_prefix="decode-wait")
        self._count = count
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._replacing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for _ in range(self._count):
            self._idle.put_nowait(_Worker(self.budget_s))

    async def warm_up(self) -> None:
        """One call through every worker, so none pays its imports on a request."""
        workers = [await self._idle.get() for _ in range(self._count)]
        try:
            await asyncio.gather(*(self._ready(worker) for worker in workers))
        finally:
            for worker in workers:
                self._idle.put_nowait(worker)

    async def _ready(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.threads, worker.call, _ping, ())

    async def _replace(self, worker: _Worker) -> None:
        worker.kill()
        fresh = _Worker(self.budget_s)
        # Ready before it serves: no request waits on a new worker's imports.
        await self._ready(fresh)
        self._idle.put_nowait(fresh)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[DecodeSession]:
        worker = await self._idle.get()
        session = DecodeSession(self, worker)
        ended_well = False
        try:
            yield session
            ended_well = True
        finally:
            ahead = session.ahead
            if ahead is not None and not ahead.done() and ended_well:
                # The request is answered; the worker returns once the call ahead is done.
                self._background(self._release_after(session, ahead))
            else:
                if ahead is not None and not ahead.done():
                    ahead.cancel()  # the request failed or was cancelled: stop that decode too
                    session.busy = True
                self._release(session)

    def _release(self, session: DecodeSession) -> None:
        worker = session.worker
        if session.ahead is not None and session.ahead.done() and not session.ahead.cancelled():
            session.ahead.exception()  # retrieved: an unused call ahead's error is not logged
        if session.busy or not worker.process.is_alive():
            # Over budget, cancelled or crashed mid-decode: the worker's state is unknown.
            self._background(self._replace(worker))
        else:
            self._idle.put_nowait(worker)

    async def _release_after(self, session: DecodeSession, ahead: asyncio.Task[Any]) -> None:
        await asyncio.wait([ahead])
        self._release(session)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    def stop(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().kill()
        self.threads.shutdown(wait=False, cancel_futures=True)
