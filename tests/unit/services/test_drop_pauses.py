"""The pause after each step of removing an expired partition's files."""

from __future__ import annotations

import pytest

from worker.services.table_partitions import MAX_PAUSE_S, PAUSE_FACTOR, pause_after


def test_the_pause_is_four_times_the_step() -> None:
    assert PAUSE_FACTOR == 4.0
    assert pause_after(0.25) == pytest.approx(1.0)
    assert pause_after(2.5) == pytest.approx(10.0)


def test_the_pause_is_at_most_ten_seconds() -> None:
    assert MAX_PAUSE_S == 10.0
    assert pause_after(2.6) == 10.0
    assert pause_after(300.0) == 10.0


def test_a_factor_of_zero_means_no_pause() -> None:
    assert pause_after(3.0, 0.0) == 0.0
