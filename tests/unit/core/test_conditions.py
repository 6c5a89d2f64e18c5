"""Repeating problems are logged once, shown by /readyz and counted."""

from __future__ import annotations

import logging

import pytest

from worker.core import metrics
from worker.core.conditions import Conditions

CONDITIONS = "worker.core.conditions"


def gauge(kind: str) -> float:
    value = metrics.registry.get_sample_value("persister_conditions", {"kind": kind})
    assert value is not None
    return value


def test_a_condition_seen_many_times_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    conditions = Conditions("test-once")
    with caplog.at_level(logging.INFO, logger="worker.core.conditions"):
        for _ in range(50):
            conditions.raise_("events[0]", "events[0]: cannot fetch at offset 7")
        conditions.clear("events[0]", "events[0]: fetching again")
        conditions.clear("events[0]", "events[0]: fetching again")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == CONDITIONS] == [
        ("ERROR", "events[0]: cannot fetch at offset 7"),
        ("INFO", "events[0]: fetching again"),
    ]


def test_a_condition_shows_in_readiness_and_the_metric_while_it_lasts() -> None:
    conditions = Conditions("test-ready")
    assert gauge("test-ready") == 0
    conditions.raise_("a", "reason a")
    conditions.raise_("b", "reason b", level=logging.WARNING)
    assert gauge("test-ready") == 2
    assert metrics.readiness.conditions["test-ready:a"] == "reason a"
    conditions.clear_where("a")
    assert gauge("test-ready") == 1
    assert "test-ready:a" not in metrics.readiness.conditions
    conditions.clear("b")
    assert gauge("test-ready") == 0
    assert not [k for k in metrics.readiness.conditions if k.startswith("test-ready:")]


def test_a_condition_that_does_not_make_the_replica_unready_is_only_counted() -> None:
    conditions = Conditions("test-quiet", unready=False)
    conditions.raise_("x", "reason x", level=logging.WARNING)
    assert gauge("test-quiet") == 1
    assert not [k for k in metrics.readiness.conditions if k.startswith("test-quiet:")]
    conditions.clear("x")


def test_a_changed_reason_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    conditions = Conditions("test-changed")
    with caplog.at_level(logging.ERROR, logger="worker.core.conditions"):
        assert conditions.raise_("k", "first") is True
        assert conditions.raise_("k", "first") is False
        assert conditions.raise_("k", "second") is True
    assert [r.getMessage() for r in caplog.records if r.name == CONDITIONS] == ["first", "second"]
    conditions.clear("k")
