"""The soak's latency quantiles from Prometheus histogram buckets."""

from __future__ import annotations

import math

from tests.soak.probes import quantile, window

INF = float("inf")


def test_quantile_interpolates_within_the_bucket_of_its_rank() -> None:
    # 10 observations: 4 up to 0.1 s, 4 more up to 0.5 s, 2 more up to 1 s.
    buckets = {0.1: 4.0, 0.5: 8.0, 1.0: 10.0, INF: 10.0}
    assert quantile(0.5, buckets) == 0.1 + 0.4 * (1 / 4)
    assert math.isclose(quantile(0.99, buckets) or 0, 0.5 + 0.5 * (1.9 / 2))


def test_no_observations_no_quantile() -> None:
    assert quantile(0.5, {0.1: 0.0, INF: 0.0}) is None


def test_a_window_is_the_difference_unless_the_process_restarted() -> None:
    before = {0.1: 4.0, INF: 10.0}
    assert window(before, {0.1: 5.0, INF: 13.0}) == {0.1: 1.0, INF: 3.0}
    assert window(before, {0.1: 1.0, INF: 2.0}) == {0.1: 1.0, INF: 2.0}
