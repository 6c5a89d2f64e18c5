"""The consumer group's timeouts follow the settings."""

from __future__ import annotations

from worker.core.settings import Settings
from worker.pipeline.fetching import group_timing


def test_defaults_hear_of_a_rebalance_within_three_seconds() -> None:
    assert group_timing(Settings()) == {
        "session_timeout_ms": 45_000,
        "heartbeat_interval_ms": 3_000,
        "max_poll_interval_ms": 300_000,
        "rebalance_timeout_ms": 45_000,
    }


def test_heartbeat_stays_within_a_third_of_a_short_session_timeout() -> None:
    timing = group_timing(Settings(session_timeout_s=6, heartbeat_interval_s=3))
    assert (timing["session_timeout_ms"], timing["heartbeat_interval_ms"]) == (6_000, 2_000)


def test_a_shorter_heartbeat_is_kept() -> None:
    assert group_timing(Settings(heartbeat_interval_s=0.5))["heartbeat_interval_ms"] == 500
