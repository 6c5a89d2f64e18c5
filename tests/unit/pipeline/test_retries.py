"""One line per kind of failure, whatever the partitions and attempts; and
nothing left behind in `/readyz` once the partitions write again."""

from __future__ import annotations

import logging

import pytest

from worker.core import metrics
from worker.pipeline.partition_state import Owned
from worker.pipeline.retries import Retries


class DatabaseError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


DENIED = DatabaseError("42501", "permission denied for table events")
LOCKED = DatabaseError("55P03", "canceling statement due to lock timeout")


def unready() -> list[str]:
    return sorted(metrics.readiness.conditions.values())


def test_many_partitions_and_attempts_make_one_line_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    retries, states = Retries(), [Owned() for _ in range(4)]
    for _attempt in range(3):
        for p, state in enumerate(states):
            retries.failed(("events", p), state, "writing a batch", LOCKED)
    assert [s.failures for s in states] == [3, 3, 3, 3]
    assert all(s.retry_at > 0 for s in states)
    for p in range(4):
        retries.succeeded(("events", p))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "writing a batch failed: DatabaseError: SQLSTATE 55P03: canceling statement due to "
            "lock timeout (first on events[0]); retrying with backoff, every 30 s at most",
        ),
        ("INFO", "writing a batch works again"),
    ]
    assert unready() == []


def test_a_refusal_is_an_error_and_unready_until_the_partition_writes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    retries, state = Retries(), Owned()
    retries.failed(("events", 0), state, "writing a batch", DENIED)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert caplog.records[0].getMessage().endswith("until fixed")
    assert len(unready()) == 1
    # Granted back, the next attempt meets a lock: the refusal is over, quietly.
    retries.failed(("events", 0), state, "writing a batch", LOCKED)
    assert unready() == []
    retries.succeeded(("events", 0))
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING", "INFO"]
    assert unready() == []
