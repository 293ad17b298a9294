"""The real recognizer behind the batcher sees only the bucket batch sizes on a GPU.

A GPU pays for each new input shape (cuDNN's search, TensorRT engines): warm-up must run
every bucket and no other batch size may reach the model afterwards. On the CPU, where a
shape costs nothing, batches run at their own size. A spy wraps the real ONNX Runtime
session's run to record the shapes; the model itself runs as usual (on the CPU here: no GPU
is lent to these tests, so the GPU's padding is asked for, as the embed service asks for it
when its session runs on one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from services.embed.batcher import Batcher, batch_buckets
from services.embed.recognizer import FaceRecognizer
from services.embed.settings import EmbedSettings

MAX_BATCH = 32


@pytest.fixture(scope="module")
def recorded() -> Iterator[tuple[FaceRecognizer, list[tuple[int, ...]]]]:
    recognizer = FaceRecognizer(EmbedSettings(max_batch=MAX_BATCH))
    recognizer.load()
    shapes: list[tuple[int, ...]] = []
    session = recognizer.session
    real_run = session.run

    def spy(outputs: Any, feeds: dict[str, np.ndarray], *args: Any) -> Any:
        shapes.extend(tuple(value.shape) for value in feeds.values())
        return real_run(outputs, feeds, *args)

    session.run = spy  # type: ignore[method-assign]
    yield recognizer, shapes


def test_warm_up_runs_every_bucket(
    recorded: tuple[FaceRecognizer, list[tuple[int, ...]]],
) -> None:
    recognizer, shapes = recorded
    shapes.clear()
    recognizer.warm_up()
    assert [shape[0] for shape in shapes] == [1, 2, 4, 8, 16, 32]
    assert all(shape[1:] == (3, 112, 112) for shape in shapes)


@pytest.mark.parametrize("pad_to_buckets", [True, False], ids=["gpu", "cpu"])
async def test_batch_sizes_that_reach_the_model(
    recorded: tuple[FaceRecognizer, list[tuple[int, ...]]], pad_to_buckets: bool
) -> None:
    recognizer, shapes = recorded
    rng = np.random.default_rng(7)
    sizes = [1, 3, 5, 7, 9, 13, 17, 31, 32, 2, 6, 11]
    calls = [list(rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)) for n in sizes]
    alone = [recognizer.embed(crops) for crops in calls]
    shapes.clear()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(
            recognizer.embed,
            pool,
            model="w600k_mbf",
            max_batch=MAX_BATCH,
            max_delay_s=0.002,
            max_queue=1024,
            pad_to_buckets=pad_to_buckets,
        )
        batcher.start()
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(crops) for crops in calls)), 60
            )
        finally:
            await batcher.stop()
    assert shapes, "the model never ran"
    if pad_to_buckets:
        assert {shape[0] for shape in shapes} <= set(batch_buckets(MAX_BATCH))
    else:  # every crop run once, none padded
        assert sum(shape[0] for shape in shapes) == sum(sizes)
    for answer, expected in zip(answers, alone, strict=True):
        np.testing.assert_allclose(answer, expected, atol=1e-4)
