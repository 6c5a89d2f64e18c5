"""Per-partition pause decisions and the retry policy."""

from __future__ import annotations

import pytest

from worker.core.retry import backoff_s
from worker.pipeline.partition_state import RETRY_BASE_S, RETRY_CAP_S, Owned, names


def ready() -> Owned:
    return Owned(stored=10, ready=True)


def test_a_ready_partition_with_room_is_fetched() -> None:
    assert ready().should_pause(held=0, two_batches=4000, over_bound=False, now=100.0) is False
    assert ready().should_pause(held=3999, two_batches=4000, over_bound=False, now=100.0) is False


def test_not_positioned_yet_is_paused() -> None:
    assert Owned().should_pause(held=0, two_batches=4000, over_bound=False, now=100.0) is True


def test_waiting_to_retry_is_paused_until_the_retry_time() -> None:
    state = ready()
    state.retry_at = 105.0
    assert state.should_pause(held=0, two_batches=4000, over_bound=False, now=104.9) is True
    assert state.should_pause(held=0, two_batches=4000, over_bound=False, now=105.0) is False


def test_two_batches_held_is_paused() -> None:
    assert ready().should_pause(held=4000, two_batches=4000, over_bound=False, now=0.0) is True


def test_over_the_global_bound_only_partitions_holding_data_pause() -> None:
    assert ready().should_pause(held=1, two_batches=4000, over_bound=True, now=0.0) is True
    assert ready().should_pause(held=0, two_batches=4000, over_bound=True, now=0.0) is False


@pytest.mark.parametrize("failures", [1, 2, 5, 10, 50])
def test_write_retries_are_jittered_below_an_exponential_cap(failures: int) -> None:
    cap = min(RETRY_CAP_S, 0.2 * 2**failures)
    delays = [backoff_s(failures, RETRY_BASE_S, RETRY_CAP_S) for _ in range(200)]
    assert all(0 <= d <= cap for d in delays)
    assert len(set(delays)) > 100  # jittered, not one fixed delay


def test_names_sorts_partitions() -> None:
    assert names([("b", 1), ("a", 2), ("a", 0)]) == "a[0], a[2], b[1]"
    assert names([]) == "nothing"
