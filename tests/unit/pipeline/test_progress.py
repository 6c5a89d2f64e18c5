from __future__ import annotations

from worker.pipeline.progress import Throughput


def test_the_first_call_starts_the_window_and_logs_nothing() -> None:
    assert Throughput(60.0).due(100.0, events=5, lag=7) is None


def test_a_line_is_due_once_a_minute_at_most_with_the_events_since_the_last() -> None:
    throughput = Throughput(60.0)
    throughput.due(0.0, events=0, lag=0)
    lines = [
        due
        for now in range(1, 181)
        if (due := throughput.due(float(now), events=now * 10, lag=0)) is not None
    ]
    assert lines == [(600, 60.0), (600, 60.0), (600, 60.0)]


def test_an_idle_caught_up_replica_logs_nothing() -> None:
    throughput = Throughput(60.0)
    throughput.due(0.0, events=42, lag=0)
    assert [throughput.due(float(now), events=42, lag=0) for now in (60, 120, 180)] == [
        None,
        None,
        None,
    ]


def test_lag_left_without_progress_is_logged() -> None:
    throughput = Throughput(60.0)
    throughput.due(0.0, events=42, lag=0)
    assert throughput.due(61.0, events=42, lag=1000) == (0, 61.0)
