"""`persister_end_to_end_seconds`: a batch's ages counted in bulk give what
observing each would, per event, and read as a Prometheus histogram."""

from __future__ import annotations

import itertools
import random
import time
from fractions import Fraction

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.core import metrics
from worker.core.weighted_histogram import BulkHistogram, BulkHistogramCollector, geometric_bounds

BOUNDS = metrics.END_TO_END_BUCKETS
NOW_S = 1_800_000_000.0


def one_by_one(values: list[float]) -> tuple[list[float], float, float]:
    """(cumulative counts per bound, count, sum) from prometheus_client's own Histogram."""
    registry = CollectorRegistry()
    reference = Histogram("reference", "", buckets=BOUNDS, registry=registry)
    for value in values:
        reference.observe(value)
    counts = [
        registry.get_sample_value("reference_bucket", {"le": str(bound)}) or 0.0 for bound in BOUNDS
    ]
    count = registry.get_sample_value("reference_count") or 0.0
    return counts, count, registry.get_sample_value("reference_sum") or 0.0


def test_bulk_counts_equal_observing_each_value() -> None:
    rng = random.Random(7)
    batches = [
        [rng.lognormvariate(-2.5, 1.5) for _ in range(rng.randint(0, 3000))] for _ in range(20)
    ]
    # Values exactly on a bound count in it (`le`), as Prometheus counts them.
    batches.append([*BOUNDS, BOUNDS[0] / 2, 1e6])
    bulk = BulkHistogram(BOUNDS)
    for batch in batches:
        bulk.observe(batch)
    counts, count, total = bulk.snapshot()
    want_counts, want_count, want_sum = one_by_one([v for b in batches for v in b])
    assert counts == want_counts
    assert count == want_count == sum(len(b) for b in batches)
    assert total == pytest.approx(want_sum, rel=1e-12)


def ages_one_by_one(now_s: float, stamps: list[int | None]) -> list[float]:
    return [max(0.0, now_s - t / 1000) for t in stamps if t is not None and t >= 0]


def test_ages_from_timestamps_equal_observing_each_age() -> None:
    rng = random.Random(11)
    now_ms = NOW_S * 1000 + 0.25  # between two milliseconds: no age exactly on a bound
    bulk = BulkHistogram(BOUNDS)
    every: list[float] = []
    exact = Fraction(0)
    # Batches smaller and larger than the bucket count: each is counted its own way.
    for size in [0, 1, 5, 40, 82, 83, 84, *(rng.randint(0, 3000) for _ in range(20))]:
        stamps: list[int | None] = [int(now_ms - rng.lognormvariate(4.5, 1.8)) for _ in range(size)]
        # Records without a timestamp, and some ahead of this clock.
        stamps += [None, -1, int(now_ms) + 700]
        rng.shuffle(stamps)
        bulk.observe_ages(NOW_S + 0.00025, stamps)
        every += ages_one_by_one(NOW_S + 0.00025, stamps)
        exact += sum(
            max(Fraction(0), Fraction(NOW_S + 0.00025) - Fraction(t, 1000))
            for t in stamps
            if t is not None and t >= 0
        )
    counts, count, total = bulk.snapshot()
    want_counts, want_count, want_sum = one_by_one(every)
    assert counts == want_counts
    assert count == want_count == len(every)
    # Each `now - t / 1000` rounds at the clock's magnitude (about 2e-7 s);
    # the bulk sum subtracts once and sums the rest in integers: exact.
    assert total == pytest.approx(float(exact), rel=1e-12)
    assert total == pytest.approx(want_sum, rel=1e-6)


def test_records_without_a_timestamp_are_not_observed() -> None:
    bulk = BulkHistogram(BOUNDS)
    bulk.observe_ages(NOW_S, [None, -1, None])
    assert bulk.snapshot() == ([0] * len(BOUNDS), 0, 0.0)
    bulk.observe_ages(NOW_S, [int(NOW_S * 1000) - 250, None, -1, int(NOW_S * 1000) - 40])
    _, count, total = bulk.snapshot()
    assert count == 2 and total == pytest.approx(0.29)


def test_keep_drops_the_oldest() -> None:
    bulk = BulkHistogram((0.1, 10.0))
    stamps: list[int | None] = [int(NOW_S * 1000) - ms for ms in (30, 5_000, 10, 20)]
    bulk.observe_ages(NOW_S, stamps, keep=3)
    counts, count, total = bulk.snapshot()
    assert (counts, count) == ([3, 3], 3) and total == pytest.approx(0.06)
    bulk.observe_ages(NOW_S, stamps, keep=0)
    assert bulk.snapshot()[1] == 3


def test_observe_batch_counts_events_not_batches() -> None:
    before = metrics.end_to_end.snapshot()[1]
    now_ms = int(time.time() * 1000)
    # Four records: two with a timestamp, one without, one negative.
    metrics.observe_batch(4, 4, 4, (), 0.01, [now_ms - 100, None, -1, now_ms - 300])
    assert metrics.end_to_end.snapshot()[1] == before + 2
    # Three timestamps but two events written (one was already stored).
    metrics.observe_batch(3, 2, 2, (), 0.01, [now_ms - 100, now_ms - 90_000, now_ms - 200])
    counts, count, _ = metrics.end_to_end.snapshot()
    assert count == before + 4
    # The 90 s age (the replayed record) was the one left out: nothing beyond 60 s.
    assert counts[-1] == count


def test_bounds_run_from_5_ms_to_60_s_geometrically() -> None:
    assert BOUNDS[0] == 0.005 and BOUNDS[-1] == 60.0
    assert len(BOUNDS) == 83
    ratios = [b / a for a, b in itertools.pairwise(BOUNDS)]
    assert max(ratios) < 1.128
    assert geometric_bounds(1.0, 8.0, 1) == (1.0, 2.0, 4.0, 8.0)


def test_exposition_is_a_histogram_with_every_bound() -> None:
    registry = CollectorRegistry()
    histogram = BulkHistogram((0.005, 0.0112, 60.0))
    registry.register(BulkHistogramCollector("latency_seconds", "Per event", histogram))
    histogram.observe([0.001, 0.005, 0.01, 0.5, 75.0])
    text = generate_latest(registry).decode()
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        'latency_seconds_bucket{le="0.005"} 2.0',
        'latency_seconds_bucket{le="0.0112"} 3.0',
        'latency_seconds_bucket{le="60.0"} 4.0',
        'latency_seconds_bucket{le="+Inf"} 5.0',
        "latency_seconds_count 5.0",
        "latency_seconds_sum 75.516",
    ]
    assert "# TYPE latency_seconds histogram" in text
    [family] = text_string_to_metric_families(text)
    assert family.type == "histogram" and family.documentation == "Per event"


def test_the_worker_exposes_the_metric_per_event() -> None:
    text = generate_latest(metrics.registry).decode()
    assert "# HELP persister_end_to_end_seconds Kafka record timestamp to committed" in text
    assert "per event" in text
    les = [
        line.split('"')[1]
        for line in text.splitlines()
        if line.startswith("persister_end_to_end_seconds_bucket{")
    ]
    assert les == [*(repr(b) for b in BOUNDS), "+Inf"]
