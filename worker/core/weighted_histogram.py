"""A Prometheus histogram fed a whole batch of values at a time.

`Histogram.observe()` costs about a microsecond and a lock per value: per
event, that is a sizeable share of the worker's budget. `BulkHistogram`
sorts a batch's values once (in C) and finds each bucket's count by
bisection (O(buckets · log n)), with the counts, sum and count that
observing each value would give; a batch's ages are counted from its
timestamps without a Python operation per record. `BulkHistogramCollector`
exposes it as an ordinary histogram (`_bucket{le=...}`, `_sum`, `_count`).
"""

from __future__ import annotations

import itertools
import math
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import cast

from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


def geometric_bounds(lowest: float, highest: float, per_doubling: int) -> tuple[float, ...]:
    """Bucket bounds from `lowest` to `highest`, each 2**(1/per_doubling)
    times the previous (the last step shorter), rounded to 3 significant
    digits: readable `le` labels, the ratio moving by under 0.5%."""
    ratio = 2 ** (1 / per_doubling)
    below = math.ceil(math.log(highest / lowest, ratio) - 1e-9)
    return (*(float(f"{lowest * ratio**i:.3g}") for i in range(below)), float(highest))


class BulkHistogram:
    """Bucket counts, sum and count; no I/O, no clock."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self._bounds_ms = [b * 1000 for b in self.bounds]
        # Per bucket, not cumulative: a value adds to one count only. The
        # last counts values above every bound (+Inf's own).
        self._buckets = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: Iterable[float]) -> None:
        ordered = sorted(values)
        n = len(ordered)
        # Below bound i: values <= bound i, as Prometheus' `le`.
        below = [bisect_right(ordered, bound) for bound in self.bounds]
        self._add_cumulative(below, n, math.fsum(ordered))

    def observe_ages(
        self, now_s: float, timestamps_ms: Sequence[int | None], keep: int | None = None
    ) -> None:
        """Add the age at `now_s` of each timestamp (ms since the epoch), as
        `observe(max(0, now_s - t / 1000) for t ...)` would. Timestamps None
        or negative (none set) are left out; one after `now_s` (clocks
        apart) is age 0. `keep`: only the `keep` youngest."""
        try:
            # Records come in about timestamp order: Timsort's best case.
            stamps = sorted(cast("Sequence[int]", timestamps_ms))
        except TypeError:  # some None
            stamps = sorted(t for t in timestamps_ms if t is not None)
        first = bisect_left(stamps, 0)
        if keep is not None:
            first = max(first, len(stamps) - max(keep, 0))
        if first:
            del stamps[:first]
        n = len(stamps)
        if n < len(self.bounds):
            # Fewer values than buckets: one bisection of the bounds each.
            ages = [now_s - t / 1000 for t in stamps]
            with self._lock:
                for age in ages:
                    self._buckets[bisect_left(self.bounds, age)] += 1
                self.count += n
                self.sum += _age_sum(now_s, stamps)
            return
        # age <= bound  <=>  timestamp >= now - bound: one bisection of the
        # sorted timestamps per bound, O(buckets · log n).
        # Whole milliseconds (ceil: exact for integer timestamps) compare faster.
        now_ms = now_s * 1000
        below = [n - bisect_left(stamps, math.ceil(now_ms - b)) for b in self._bounds_ms]
        self._add_cumulative(below, n, _age_sum(now_s, stamps))

    def _add_cumulative(self, below: list[int], count: int, total: float) -> None:
        with self._lock:
            previous = 0
            for i, n in enumerate(below):
                self._buckets[i] += n - previous
                previous = n
            self._buckets[-1] += count - previous
            self.count += count
            self.sum += total

    def snapshot(self) -> tuple[list[int], int, float]:
        """(cumulative counts per bound, count, sum), consistent with one another."""
        with self._lock:
            counts = list(itertools.accumulate(self._buckets[:-1]))
            return counts, self.count, self.sum


def _age_sum(now_s: float, stamps: list[int]) -> float:
    """Sum of max(0, now_s - t / 1000) over `stamps` (ascending), exactly:
    the newest past timestamp's age is taken in two exact steps (whole
    seconds, then milliseconds) and the others' distances to it summed in
    integers, where summing each age would round each at the clock's
    magnitude (about 2e-7 s)."""
    past = bisect_right(stamps, now_s * 1000)
    if not past:
        return 0.0
    newest = stamps[past - 1]
    seconds, ms = divmod(newest, 1000)
    newest_age = (now_s - seconds) - ms / 1000
    spread_ms = past * newest - (sum(stamps) - sum(stamps[past:]))
    return past * newest_age + spread_ms / 1000


class BulkHistogramCollector(Collector):
    """Exposes a `BulkHistogram` under `name`, as a Prometheus histogram."""

    def __init__(self, name: str, documentation: str, histogram: BulkHistogram) -> None:
        self.name, self.documentation, self.histogram = name, documentation, histogram

    def collect(self) -> Iterator[Metric]:
        counts, count, total = self.histogram.snapshot()
        buckets = [
            # repr: the shortest text that reads back as the bound ("0.005", "60.0").
            (repr(bound), n)
            for bound, n in zip(self.histogram.bounds, counts, strict=True)
        ]
        buckets.append(("+Inf", count))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)

    def describe(self) -> Iterator[Metric]:
        # The family without samples: lets the registry check name clashes
        # at registration without reading the counts.
        yield HistogramMetricFamily(self.name, self.documentation)
