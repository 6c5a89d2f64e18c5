"""The promise of `persister_end_to_end_seconds`' buckets: p50 and p99 as
Prometheus' `histogram_quantile` computes them are within 10% of the exact
per-event quantiles, for latencies as a worker sees them. Pure."""

from __future__ import annotations

import itertools
import random

from tests.quantiles import INF, exact_quantile, histogram_quantile
from worker.core.metrics import END_TO_END_BUCKETS
from worker.core.weighted_histogram import BulkHistogram

QUANTILES = (0.5, 0.9, 0.99)


def estimates(values: list[float]) -> dict[float, tuple[float, float]]:
    """Per quantile: (histogram estimate, exact)."""
    histogram = BulkHistogram(END_TO_END_BUCKETS)
    # In batches, as the worker feeds it.
    for start in range(0, len(values), 2000):
        histogram.observe(values[start : start + 2000])
    counts, count, _ = histogram.snapshot()
    buckets = {**dict(zip(END_TO_END_BUCKETS, map(float, counts), strict=True)), INF: count}
    ordered = sorted(values)
    found = {}
    for q in QUANTILES:
        estimate = histogram_quantile(q, buckets)
        assert estimate is not None
        found[q] = (estimate, exact_quantile(q, ordered))
    return found


def assert_within_10_percent(values: list[float]) -> None:
    for q, (estimate, exact) in estimates(values).items():
        assert abs(estimate - exact) <= 0.10 * exact, (q, estimate, exact)


def steady(rng: random.Random, n: int) -> list[float]:
    """Log-normal around 80 ms: most between 20 and 300 ms."""
    return [rng.lognormvariate(-2.5, 0.6) for _ in range(n)]


def test_steady_load() -> None:
    assert_within_10_percent(steady(random.Random(1), 300_000))


def test_steady_load_with_a_burst() -> None:
    rng = random.Random(2)
    values = steady(rng, 300_000)
    # A producer's burst: 20,000 events queued behind one another, their
    # ages spread from 0.3 s to 2.5 s as the backlog drains.
    values += [rng.uniform(0.3, 2.5) for _ in range(20_000)]
    # And a few held through a database outage: 12 to 40 s.
    values += [rng.uniform(12.0, 40.0) for _ in range(500)]
    rng.shuffle(values)
    assert_within_10_percent(values)


def test_batched_arrivals() -> None:
    """Batches flushed every 0.5 s: ages spread evenly over the batch's
    window on top of the write time, as with a steady producer."""
    rng = random.Random(3)
    values = []
    for _ in range(500):
        write_s = rng.lognormvariate(-4.0, 0.5)  # ~18 ms
        values += [write_s + rng.uniform(0.0, 0.5) for _ in range(600)]
    assert_within_10_percent(values)


def test_any_distribution_within_the_bucket_ratio() -> None:
    """The bound whatever the values: an estimate and its exact quantile
    share a bucket, so they differ by less than the widest bucket ratio."""
    rng = random.Random(4)
    widest = max(b / a for a, b in itertools.pairwise(END_TO_END_BUCKETS))
    for _ in range(50):
        # A few point masses: the worst case for interpolation.
        masses = [rng.uniform(0.005, 60.0) for _ in range(rng.randint(1, 4))]
        values = [rng.choice(masses) for _ in range(1000)]
        for estimate, exact in estimates(values).values():
            assert abs(estimate - exact) < (widest - 1) * exact
