"""The benchmarks' throughput: counted while every slot has work, not over the run's drain;
and judged against the model-time bound of its own moment."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from benchmarks.bench_inference import (
    SAME_SMALL,
    SERVICES,
    ModelsOnEveryCore,
    Sample,
    bound_shares,
    per_photo_table,
    summarize,
)
from facescore.devtools.phone_photos import PhonePhoto


def test_one_call_at_a_time_counts_the_calls_before_the_last() -> None:
    rate, p50, p99 = summarize([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.5)])
    assert rate == pytest.approx(1.0)  # three calls ended in the 3 s before the last start
    assert p50 == pytest.approx(1000.0)
    assert p99 == pytest.approx(1500.0)


def test_the_drain_after_the_last_start_is_not_counted() -> None:
    # Two slots: four calls of 1 s, then one of 3 s that runs alone while the other slot idles.
    spans = [(0.0, 1.0), (0.0, 1.0), (1.0, 2.0), (1.0, 2.0), (2.0, 5.0)]
    rate, _, _ = summarize(spans)
    assert rate == pytest.approx(2.0)  # not 5 calls / 5 s
    assert rate > len(spans) / 5.0


def test_no_more_calls_than_slots_falls_back_to_the_whole_run() -> None:
    rate, p50, _ = summarize([(0.0, 1.0), (0.0, 2.0), (0.0, 4.0)])
    assert rate == pytest.approx(3 / 4.0)
    assert p50 == pytest.approx(2000.0)


def test_each_sample_is_judged_against_the_bound_measured_beside_it() -> None:
    fast = Sample(images_s=30.0, p50_ms=0, p99_ms=0, cpu_ms=0, models_ms=50.0)  # bound 40
    slow = Sample(images_s=24.0, p50_ms=0, p99_ms=0, cpu_ms=0, models_ms=62.5)  # bound 32
    library = Sample(images_s=20.0, p50_ms=0, p99_ms=0, cpu_ms=0)  # nothing measured beside
    shares = bound_shares([fast, slow, library], rate_bound=25.0, cores=2)
    assert shares == [(pytest.approx(40.0), pytest.approx(0.75)), (32.0, 0.75)]


def test_the_models_rates_bound_wins_when_higher() -> None:
    sample = Sample(images_s=30.0, p50_ms=0, p99_ms=0, cpu_ms=0, models_ms=100.0)  # 20
    assert bound_shares([sample], rate_bound=40.0, cores=2) == [(40.0, 0.75)]


def test_the_models_run_on_every_core_at_once() -> None:
    """The bound's own measurement: real models, one process per core (a few seconds)."""
    rng = np.random.default_rng(0)
    faces = [rng.standard_normal((1, 3, 112, 112)).astype(np.float32) for _ in range(3)]
    images = [rng.standard_normal((1, 3, 320, 256)).astype(np.float32) for _ in range(2)]
    models = ModelsOnEveryCore(faces, images)
    try:
        costs = models.measure(0.5)
    finally:
        models.close()
    # Both models ran, each run taking a plausible time (not zero: no run, not the window),
    # and no more CPU than wall time (one thread per session).
    for wall, cpu in (
        (costs.detector_ms, costs.detector_cpu_ms),
        (costs.recognizer_ms, costs.recognizer_cpu_ms),
    ):
        assert 0.1 < wall < 500
        assert 0.05 < cpu <= wall * 1.05
    assert costs.per_photo(2.0) == pytest.approx(
        (
            costs.detector_ms + 2 * costs.recognizer_ms,
            costs.detector_cpu_ms + 2 * costs.recognizer_cpu_ms,
        )
    )


def test_each_phone_photo_is_set_beside_its_decode_alone() -> None:
    """Target (a) per photo: the 12 MP p50 over its 800x600 frame's, and the decode alone
    over the same frame's, the least any pipeline with that decoder could reach."""
    photos = [PhonePhoto("a.jpg as JPEG", b"", 1), PhonePhoto("b.jpg as JPEG", b"", 5)]
    paired = {SERVICES: {SAME_SMALL: [40.0, 80.0], "12 MP HEIC": [400.0, 440.0]}}
    alone = {"12 MP HEIC": [340.0, 300.0]}
    console = Console(width=200, record=True)
    console.print(per_photo_table(photos, paired, alone))
    rows = [line for line in console.export_text().splitlines() if ".jpg" in line]
    assert "10.00x" in rows[0] and "340.0 (8.50x)" in rows[0]
    assert "5.50x" in rows[1] and "300.0 (3.75x)" in rows[1]
