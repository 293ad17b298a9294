"""The benchmarks' throughput: counted while every slot has work, not over the run's drain."""

from __future__ import annotations

import pytest

from benchmarks.bench_inference import summarize


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
