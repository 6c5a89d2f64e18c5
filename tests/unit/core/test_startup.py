"""The two start-up lines: what they say, once each, and reading them back."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from worker.core.startup import IMPORTS, SETTINGS, StartupClock, process_start, read_split

STARTUP = "worker.core.startup"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STARTUP]


def through_settings() -> StartupClock:
    clock = StartupClock(began=100.0)
    clock.end(IMPORTS, 100.5)
    clock.end(SETTINGS, 100.52)
    return clock


def test_each_line_is_said_once_with_parts_that_add_up(caplog: pytest.LogCaptureFixture) -> None:
    clock = through_settings()
    with caplog.at_level(logging.INFO, logger=STARTUP):
        clock.joining("events-group", 100.7)
        clock.joining("events-group", 103.0)  # the join tried again
        clock.joined(104.0)
        clock.stored(104.25)
        clock.stored(105.0)
    assert lines(caplog) == [
        "started in 0.70 s (imports 0.50 s, settings 0.02 s, connections 0.18 s); "
        "joining group 'events-group'",
        "first batch stored 4.25 s after start "
        "(start-up 0.70 s, group join 3.30 s, fetch and write 0.25 s)",
    ]
    split = read_split("\n".join(f"2026-01-01T00:00:00Z INFO x: {line}" for line in lines(caplog)))
    assert split is not None
    assert (split.own, split.imports, split.settings, split.connections) == (0.7, 0.5, 0.02, 0.18)
    assert (split.first_batch, split.group_join, split.fetch_and_write) == (4.25, 3.3, 0.25)


def test_a_persister_not_started_by_the_command_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never_started = StartupClock()
    no_settings = StartupClock(began=100.0)
    no_settings.end(IMPORTS, 100.5)
    with caplog.at_level(logging.INFO, logger=STARTUP):
        for clock in (never_started, no_settings):
            clock.joining("g", 101.0)
            clock.joined(102.0)
            clock.stored(103.0)
    assert lines(caplog) == []


def test_a_stored_batch_before_any_join_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = through_settings()
    with caplog.at_level(logging.INFO, logger=STARTUP):
        clock.stored(101.0)
    assert lines(caplog) == []


def test_a_log_without_the_start_up_line_reads_as_none() -> None:
    assert read_split("2026-01-01T00:00:00Z INFO worker.cli.run: starting x\n") is None
    only_first = read_split(
        "started in 1.00 s (imports 0.80 s, settings 0.05 s, connections 0.15 s); joining group 'g'"
    )
    assert only_first is not None
    assert (only_first.own, only_first.first_batch, only_first.group_join) == (1.0, None, None)


def test_the_process_start_counts_the_interpreter_s_own_start() -> None:
    code = (
        "import time; first = time.monotonic(); "
        "from worker.core.startup import process_start; print(first - process_start(first))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Before our first line: the interpreter's start (tens of ms), not minutes.
    assert 0 < float(done.stdout) < 30


def test_a_kernel_record_far_from_our_first_line_is_not_trusted() -> None:
    long_ago = time.monotonic() - 10 * 86_400
    assert process_start(long_ago) == long_ago
