"""The one retry policy: jittered, doubling, capped."""

from __future__ import annotations

import random

import pytest

from worker.core.retry import backoff_s


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.4), (2, 0.8), (5, 6.4), (8, 30.0)])
def test_the_ceiling_doubles_per_attempt_up_to_the_cap(attempt: int, ceiling: float) -> None:
    delays = [backoff_s(attempt, 0.2, 30.0, random.Random(seed)) for seed in range(500)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter: the delays spread over the whole range, not one value.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_a_very_long_run_of_failures_stays_at_the_cap() -> None:
    rng = random.Random(1)
    assert all(backoff_s(10**6, 0.5, 5.0, rng) <= 5.0 for _ in range(100))


def test_the_same_seed_gives_the_same_delays() -> None:
    first, second = random.Random(7), random.Random(7)
    delays = [backoff_s(3, 1.0, 30.0, first) for _ in range(3)]
    assert delays == [backoff_s(3, 1.0, 30.0, second) for _ in range(3)]
    assert len(set(delays)) == 3


def test_no_attempt_yet_waits_at_most_the_base() -> None:
    assert 0 <= backoff_s(0, 2.0, 30.0, random.Random(3)) <= 2.0
