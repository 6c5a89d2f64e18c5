"""Stalls: one WARNING when a wait passes PERSISTER_STALL_WARN_S, one line
when it clears, `/readyz` unready meanwhile."""

from __future__ import annotations

import logging

import pytest

from worker.core import metrics
from worker.pipeline.stalls import FETCHING, WRITING, Stalls


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_write_waiting_past_the_threshold_is_reported_once_then_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    stalls = Stalls(warn_s=10)
    stalls.begin(WRITING, "events[0]", now=100.0)
    stalls.begin(WRITING, "events[0]", now=105.0)  # a retry: the wait goes on
    stalls.check(now=109.9)
    assert lines(caplog, logging.WARNING) == []
    for now in (110.0, 111.0, 150.0):
        stalls.check(now)
    assert lines(caplog, logging.WARNING) == [
        "writing a batch stalled for 10 s on events[0] (PERSISTER_STALL_WARN_S=10)"
    ]
    assert any("stalled" in r for r in metrics.readiness.conditions.values())
    assert stalls.oldest_s(WRITING, "events[0]", now=150.0) == 50.0
    stalls.end(WRITING, "events[0]", now=154.5)
    assert lines(caplog, logging.INFO) == ["writing a batch: stall cleared after 54.5 s"]
    assert not any("stalled" in r for r in metrics.readiness.conditions.values())
    assert stalls.oldest_s(WRITING, "events[0]", now=155.0) == 0.0


def test_partitions_stalled_together_make_one_line(caplog: pytest.LogCaptureFixture) -> None:
    stalls = Stalls(warn_s=5)
    for p in range(12):
        stalls.begin(WRITING, f"events[{p}]", now=0.0)
    stalls.check(now=6.0)
    stalls.begin(WRITING, "other[0]", now=6.0)
    stalls.check(now=20.0)  # a later stall of the same step: no new line
    assert lines(caplog, logging.WARNING) == [
        "writing a batch stalled for 6 s on events[0], events[10], events[11], events[1], "
        "events[2], events[3], events[4], events[5] and 4 more (PERSISTER_STALL_WARN_S=5)"
    ]
    for p in range(12):
        stalls.forget(f"events[{p}]", now=21.0)
    # other[0] has waited 15 s: still stalled
    assert "writing a batch" in stalls.conditions
    stalls.forget("other[0]", now=22.0)
    assert "writing a batch" not in stalls.conditions


def test_observed_waits_replace_the_step_and_clear_when_answers_come() -> None:
    stalls = Stalls(warn_s=10)
    stalls.observe(FETCHING, {"events[0]": 0.0, "events[1]": 29.0}, now=30.0)
    assert stalls.stalled(FETCHING, now=30.0) == ["events[0]"]
    assert FETCHING in stalls.conditions
    stalls.observe(FETCHING, {"events[0]": 30.5, "events[1]": 30.5}, now=31.0)
    assert FETCHING not in stalls.conditions


def test_an_end_without_a_begin_changes_nothing() -> None:
    stalls = Stalls(warn_s=1)
    stalls.end(WRITING, "events[0]", now=5.0)
    stalls.forget("events[0]", now=5.0)
    assert stalls.stalled(WRITING, now=5.0) == []
