"""The batcher on its own: by size, by delay, bounded, cancellation, errors per batch.

These are unit tests of the batching logic, so a small fake model stands in for the
recognizer: it tags each crop with a number, can hold a run until the test lets it go, and
fails a run holding a chosen crop. The real recognizer behind the batcher is tested in
test_batch_shapes.py and test_embed_service.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.common.errors import FaceScoreError, Reason
from services.embed.batcher import Batcher, batch_buckets

WAIT = 30.0  # Generous: only a hang reaches it.


def crop(tag: int) -> np.ndarray:
    return np.full((2, 2, 3), tag, np.uint8)


class FakeModel:
    """Stands in for FaceRecognizer.embed: one vector per crop, [tag]."""

    def __init__(self, hold_first: bool = False, fail_on: int | None = None) -> None:
        self.runs: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        tags = [int(c[0, 0, 0]) for c in crops]
        self.runs.append(tags)
        self.started.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the test never released the model")
        if self.fail_on in tags:
            raise RuntimeError(f"model failed on crop {self.fail_on}")
        return np.array([[tag] for tag in tags], np.float32)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


@pytest.fixture
async def make_batcher(
    executor: ThreadPoolExecutor,
) -> AsyncIterator[Callable[..., Batcher]]:
    made: list[Batcher] = []

    def make(model: FakeModel, pad_to_buckets: bool = True, **options: float) -> Batcher:
        settings = {"max_batch": 4, "max_delay_s": 60.0, "max_queue": 64, **options}
        batcher = Batcher(
            model,
            executor,
            model="fake",
            max_batch=int(settings["max_batch"]),
            max_delay_s=settings["max_delay_s"],
            max_queue=int(settings["max_queue"]),
            pad_to_buckets=pad_to_buckets,
        )
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await batcher.stop()


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds; fails only on a hang."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0)


async def held(model: FakeModel) -> None:
    """Wait until the model is inside its first run."""
    assert await asyncio.to_thread(model.started.wait, WAIT)


def tags(vectors: np.ndarray) -> list[int]:
    return [int(v[0]) for v in vectors]


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(24) == (1, 2, 4, 8, 16, 24)
    assert batch_buckets(1) == (1,)


async def test_a_full_batch_runs_without_waiting_for_the_delay(
    make_batcher: Callable[..., Batcher],
) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=4, max_delay_s=3600)
    # Only the batch size can start this run: the delay is an hour.
    result = await asyncio.wait_for(batcher.submit([crop(t) for t in (1, 2, 3, 4)]), WAIT)
    assert tags(result) == [1, 2, 3, 4]
    assert model.runs == [[1, 2, 3, 4]]


async def test_a_partial_batch_runs_after_the_delay_padded_to_a_bucket(
    make_batcher: Callable[..., Batcher],
) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch=32, max_delay_s=0.001)
    result = await asyncio.wait_for(batcher.submit([crop(t) for t in (1, 2, 3)]), WAIT)
    assert tags(result) == [1, 2, 3]  # the padding's results are dropped
    assert model.runs == [[1, 2, 3, 3]]  # 3 crops padded to the bucket of 4


async def test_on_the_cpu_a_batch_runs_at_its_own_size(
    make_batcher: Callable[..., Batcher],
) -> None:
    """Without a GPU provider, padding would only add work: 3 crops run as 3."""
    model = FakeModel()
    batcher = make_batcher(model, pad_to_buckets=False, max_batch=32, max_delay_s=0.001)
    result = await asyncio.wait_for(batcher.submit([crop(t) for t in (1, 2, 3)]), WAIT)
    assert tags(result) == [1, 2, 3]
    assert model.runs == [[1, 2, 3]]


async def test_calls_arriving_during_a_run_share_the_next_one(
    make_batcher: Callable[..., Batcher],
) -> None:
    model = FakeModel(hold_first=True)
    batcher = make_batcher(model, max_batch=8, max_delay_s=0)
    first = asyncio.create_task(batcher.submit([crop(1)]))
    await held(model)
    later = [asyncio.create_task(batcher.submit([crop(t)])) for t in (2, 3, 4, 5)]
    await until(lambda: batcher.queued == 4)
    model.release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *later), WAIT)
    assert [tags(a) for a in answers] == [[1], [2], [3], [4], [5]]
    assert model.runs == [[1], [2, 3, 4, 5]]


async def test_the_queue_is_bounded(make_batcher: Callable[..., Batcher]) -> None:
    model = FakeModel(hold_first=True)
    batcher = make_batcher(model, max_batch=4, max_delay_s=0, max_queue=3)
    running = asyncio.create_task(batcher.submit([crop(1)]))
    await held(model)
    waiting = asyncio.create_task(batcher.submit([crop(2), crop(3), crop(4)]))
    await until(lambda: batcher.queued == 3)
    with pytest.raises(FaceScoreError) as refused:
        await batcher.submit([crop(5)])
    assert refused.value.reason == Reason.QUEUE_FULL
    model.release.set()
    assert tags(await asyncio.wait_for(waiting, WAIT)) == [2, 3, 4]
    assert tags(await asyncio.wait_for(running, WAIT)) == [1]
    assert all(5 not in run for run in model.runs)


async def test_a_cancelled_callers_crops_are_skipped(make_batcher: Callable[..., Batcher]) -> None:
    model = FakeModel(hold_first=True)
    batcher = make_batcher(model, max_batch=8, max_delay_s=0)
    first = asyncio.create_task(batcher.submit([crop(1)]))
    await held(model)
    gone = asyncio.create_task(batcher.submit([crop(2), crop(3)]))
    stays = asyncio.create_task(batcher.submit([crop(4)]))
    await until(lambda: batcher.queued == 3)
    gone.cancel()  # the caller's deadline passed, or it hung up
    model.release.set()
    assert tags(await asyncio.wait_for(stays, WAIT)) == [4]
    await asyncio.wait_for(first, WAIT)
    assert gone.cancelled()
    assert model.runs == [[1], [4]]


async def test_a_model_error_reaches_only_that_batchs_callers(
    make_batcher: Callable[..., Batcher],
) -> None:
    model = FakeModel(hold_first=True, fail_on=2)
    batcher = make_batcher(model, max_batch=2, max_delay_s=0)
    failing = [asyncio.create_task(batcher.submit([crop(t)])) for t in (1, 2)]
    await held(model)
    fine = asyncio.create_task(batcher.submit([crop(3), crop(4)]))
    await until(lambda: batcher.queued == 2)
    model.release.set()
    for call in failing:  # both crops of the failed run: each caller hears of it
        with pytest.raises(RuntimeError, match="model failed on crop 2"):
            await asyncio.wait_for(call, WAIT)
    assert tags(await asyncio.wait_for(fine, WAIT)) == [3, 4]
    assert model.runs == [[1, 2], [3, 4]]
    # And the batcher keeps serving.
    assert tags(await asyncio.wait_for(batcher.submit([crop(5)]), WAIT)) == [5]


@contextlib.asynccontextmanager
async def two_workers(
    run: Callable[[list[np.ndarray]], np.ndarray],
    both: threading.Barrier,
    *,
    max_batch: int,
    spread: bool = False,
) -> AsyncIterator[Batcher]:
    """A batcher of two workers on two threads, as embed runs on the CPU; `both` is broken
    on the way out, so a run left waiting at it ends."""
    with ThreadPoolExecutor(2) as pool:
        batcher = Batcher(
            run,
            pool,
            model="fake",
            max_batch=max_batch,
            max_delay_s=0.001,
            max_queue=64,
            pad_to_buckets=False,
            workers=2,
            spread=spread,
        )
        batcher.start()
        try:
            yield batcher
        finally:
            both.abort()
            await batcher.stop()


async def test_two_workers_run_two_batches_at_once() -> None:
    """Both runs must be inside the model together: each waits at a barrier for the other,
    which one worker would never let it reach."""
    both = threading.Barrier(2, timeout=WAIT)
    model = FakeModel()
    runs: list[list[int]] = []

    def together(crops: list[np.ndarray]) -> np.ndarray:
        both.wait()
        out = model(crops)
        runs.append([int(c[0, 0, 0]) for c in crops])
        return out

    async with two_workers(together, both, max_batch=2) as batcher:
        first, second = await asyncio.wait_for(
            asyncio.gather(batcher.submit([crop(1), crop(2)]), batcher.submit([crop(3), crop(4)])),
            WAIT,
        )
    assert tags(first) == [1, 2] and tags(second) == [3, 4]
    assert sorted(runs) == [[1, 2], [3, 4]]


@pytest.mark.parametrize("spread", [True, False])
async def test_on_the_cpu_one_calls_crops_are_shared_by_idle_workers(spread: bool) -> None:
    """Spread (the CPU): a photo's crops that find both workers idle run on both at once,
    the first two runs each waiting at a barrier for the other, none holding more than its
    share. Not spread (a GPU): one batch."""
    both = threading.Barrier(2, timeout=WAIT)
    started: list[int] = []
    runs: list[list[int]] = []

    def model(crops: list[np.ndarray]) -> np.ndarray:
        started.append(len(crops))
        if spread and len(started) <= 2:
            both.wait()
        runs.append([int(c[0, 0, 0]) for c in crops])
        return np.array([[int(c[0, 0, 0])] for c in crops], np.float32)

    async with two_workers(model, both, max_batch=32, spread=spread) as batcher:
        result = await asyncio.wait_for(batcher.submit([crop(t) for t in range(1, 6)]), WAIT)
    assert tags(result) == [1, 2, 3, 4, 5]  # in the caller's order, whichever run ends first
    if spread:
        assert runs[0] != [1, 2, 3, 4, 5] and max(map(len, runs)) == 3
        assert sorted(t for run in runs for t in run) == [1, 2, 3, 4, 5]
    else:
        assert runs == [[1, 2, 3, 4, 5]]


async def test_on_the_cpu_a_free_worker_takes_only_its_share_of_the_waiting_crops() -> None:
    """While one worker is busy, the other takes half of a photo's crops, not all: when the
    first is done, there is work left for it, and neither core idles while crops wait."""
    release = threading.Event()
    unused = threading.Barrier(2, timeout=WAIT)
    runs: list[list[int]] = []

    def model(crops: list[np.ndarray]) -> np.ndarray:
        tags_in = [int(c[0, 0, 0]) for c in crops]
        if tags_in == [0]:
            assert release.wait(WAIT)  # the busy worker
        runs.append(tags_in)
        return np.array([[t] for t in tags_in], np.float32)

    async with two_workers(model, unused, max_batch=32, spread=True) as batcher:
        busy = asyncio.create_task(batcher.submit([crop(0)]))
        await asyncio.sleep(0.05)  # the first worker is inside the model
        photo = asyncio.create_task(batcher.submit([crop(t) for t in range(1, 7)]))
        for _ in range(100):
            if runs:
                break
            await asyncio.sleep(0.01)
        assert runs[0] == [1, 2, 3]  # the free worker's share of six crops, with two workers
        release.set()
        result = await asyncio.wait_for(photo, WAIT)
        await asyncio.wait_for(busy, WAIT)
    assert tags(result) == [1, 2, 3, 4, 5, 6]
    assert all(len(run) <= 3 for run in runs)
    assert sorted(t for run in runs for t in run) == list(range(7))
