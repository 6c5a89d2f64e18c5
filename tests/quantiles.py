"""Quantiles two ways, for comparing a latency histogram with the exact
figures: Prometheus' `histogram_quantile` over cumulative bucket counts, and
the exact quantile of the values themselves (as PostgreSQL's
`percentile_disc`). Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

INF = float("inf")


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile` (promql/quantile.go, bucketQuantile)
    over cumulative `buckets` (upper bound -> count, +Inf included): find the
    first bucket whose count reaches the rank q * total, then interpolate
    linearly between its lower and upper bound; the rank in +Inf gives the
    highest finite bound. None without observations (Prometheus: NaN)."""
    total = buckets.get(INF, 0.0)
    if total <= 0 or math.isnan(q):
        return None
    bounds = sorted(buckets)
    if len(bounds) < 2:
        raise ValueError("needs at least one finite bucket besides +Inf")
    if q < 0:
        return -INF
    if q > 1:
        return INF
    rank = q * total
    b = next((i for i, bound in enumerate(bounds[:-1]) if buckets[bound] >= rank), None)
    if b is None:
        return bounds[-2]
    upper = bounds[b]
    if b == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], buckets[bounds[b - 1]])
    width = buckets[upper] - below  # 0 only for q = 0 over an empty first bucket
    return lower + (upper - lower) * ((rank - below) / width if width else 1.0)


def exact_quantile(q: float, ordered: Sequence[float]) -> float:
    """The smallest value with at least q of the values at or below it
    (PostgreSQL's `percentile_disc`); `ordered` ascending, not empty."""
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
