"""Dynamic batching: crops of concurrent calls share one model run."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import grpc
import numpy as np

from services.common.errors import FaceScoreError, Reason
from services.common.metrics import BATCH_SIZE, MODEL_RUNS, MODEL_SECONDS, QUEUE_DEPTH


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes the model ever sees: powers of two below `max_batch`, and `max_batch`.

    A GPU pays for every new input shape (cuDNN's kernel search, a TensorRT engine), so
    batches are padded up to one of these few sizes, each run once at warm-up.
    """
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*sizes, max_batch)


class Batcher:
    """Collects crops until `max_batch` or until the oldest has waited `max_delay_s`.

    At most `workers` model runs at a time (one by default): while they run, new crops
    queue up and form the next batch, so batching grows with load without adding latency
    when idle. A second worker lets a CPU run two batches on two cores when the service
    that feeds it leaves one idle (phone photos of many faces). The queue is bounded
    and a call that would overflow it is refused with RESOURCE_EXHAUSTED. With
    `pad_to_buckets` (a GPU provider) each batch is padded to the next of
    `batch_buckets(max_batch)` and the padding's results are dropped; on the CPU, where a
    new shape costs nothing, padding would only add work (9 faces padded to 16 run 78 %
    more), so batches run at their own size.

    With `spread` (the CPU, whose per-crop cost does not fall with the batch size), a worker
    takes only its share of the crops waiting, as if every worker were free: a group photo's
    22 faces run as two batches of 11 on two cores, in half the time, and crops that queue
    while one worker is busy are not all taken by the other, which would leave the first
    idle when it is done. A GPU keeps them in one batch.
    """

    def __init__(
        self,
        run: Callable[[list[np.ndarray]], np.ndarray],
        executor: Executor,
        *,
        model: str,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        pad_to_buckets: bool = True,
        workers: int = 1,
        spread: bool = False,
    ) -> None:
        self._run = run
        self._pad = pad_to_buckets
        self._spread = spread
        self._workers = workers
        self._slots = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task[None]] = set()
        self._executor = executor
        self._model = model
        self._max_batch = max_batch
        self._buckets = batch_buckets(max_batch)
        self._max_delay_s = max_delay_s
        self._max_queue = max_queue
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray], float]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Crops waiting for a model run (the one running not counted)."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self._model}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        for _, future, _ in self._queue:
            future.cancel()
        self._queue.clear()

    async def submit(self, crops: list[np.ndarray]) -> np.ndarray:
        if len(self._queue) + len(crops) > self._max_queue:
            raise FaceScoreError(
                Reason.QUEUE_FULL,
                f"embedding queue is full ({self._max_queue} crops); retry later",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                metadata={"max_queue": str(self._max_queue)},
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = [loop.create_future() for _ in crops]
        self._queue.extend((crop, fut, now) for crop, fut in zip(crops, futures, strict=True))
        QUEUE_DEPTH.labels(self._model).set(len(self._queue))
        self._arrived.set()
        try:
            return np.stack(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                await self._slots.acquire()  # a worker is free: form its batch now
                deadline = self._queue[0][2] + self._max_delay_s
                while (
                    len(self._queue) < self._max_batch and (wait := deadline - time.monotonic()) > 0
                ):
                    try:
                        await asyncio.wait_for(self._arrived.wait(), wait)
                    except TimeoutError:
                        break
                    self._arrived.clear()
                size = self._max_batch
                if self._spread:  # this worker's share of what waits, among all workers
                    size = min(size, -(-len(self._queue) // self._workers))
                batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray], float]] = []
                while self._queue and len(batch) < size:
                    item = self._queue.popleft()
                    if not item[1].done():  # the caller gave up (deadline, cancel): skip it
                        batch.append(item)
                QUEUE_DEPTH.labels(self._model).set(len(self._queue))
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._run_batch(loop, batch))
                self._running.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _run_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray], float]],
    ) -> None:
        crops = [crop for crop, _, _ in batch]
        if self._pad:
            bucket = next(size for size in self._buckets if size >= len(crops))
            crops += [crops[-1]] * (bucket - len(crops))
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(self._executor, self._run, crops)
        except Exception as error:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            return
        MODEL_SECONDS.labels(self._model).observe(time.perf_counter() - started)
        MODEL_RUNS.labels(self._model).inc()
        BATCH_SIZE.labels(self._model).observe(len(batch))
        for (_, future, _), vector in zip(batch, vectors[: len(batch)], strict=True):
            if not future.done():
                future.set_result(vector)
