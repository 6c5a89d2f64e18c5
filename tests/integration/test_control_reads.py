"""A worker that cannot read its group's partition controls says so, once,
and is not ready until it can; a read never hangs the consumer loop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.pipeline import controls
from worker.pipeline.connections import create_engine
from worker.pipeline.controls import ControlWatcher, set_paused

GROUP = "readers"
PARTITIONS = [("t", 0), ("t", 1)]


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controls, "POLL_EVERY_S", 0.0)
    monkeypatch.setattr(controls, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(controls, "RETRY_CAP_S", 0.0)


def about_controls(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.INFO and "partition controls" in r.getMessage()
    ]


async def refreshed(watcher: ControlWatcher) -> float:
    """Seconds one refresh took; it must end well within its deadline."""
    started = time.monotonic()
    await asyncio.wait_for(watcher.refresh(), controls.READ_TIMEOUT_S + 5)
    return time.monotonic() - started


async def test_a_read_held_up_by_a_lock_is_given_up_reported_once_and_recovered(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await set_paused(engine, GROUP, "t", 0, True)
    watcher = ControlWatcher(engine, GROUP)
    caplog.set_level(logging.INFO)
    await refreshed(watcher)
    assert watcher.paused(PARTITIONS) == {("t", 0)}

    async with engine.connect() as blocker:
        await blocker.begin()
        await blocker.exec_driver_sql(
            "LOCK TABLE persister_partition_controls IN ACCESS EXCLUSIVE MODE"
        )
        took = [await refreshed(watcher) for _ in range(3)]
        # The last view holds meanwhile.
        assert watcher.paused(PARTITIONS) == {("t", 0)}
        reason = (
            f"partition controls of group {GROUP!r} not read (no answer within 0.5 s): "
            "pauses and reloads operators ask for may not apply; retrying with a jittered "
            "backoff of up to 0 s"
        )
        assert metrics.readiness.conditions.get("controls:read") == reason
        await blocker.rollback()
    assert all(0.5 <= s < 3 for s in took), took
    assert about_controls(caplog) == [("WARNING", reason)]

    await set_paused(engine, GROUP, "t", 1, True)
    await refreshed(watcher)
    assert watcher.paused(PARTITIONS) == {("t", 0), ("t", 1)}
    assert "controls:read" not in metrics.readiness.conditions
    assert about_controls(caplog) == [
        ("WARNING", reason),
        ("INFO", f"partition controls of group {GROUP!r} read again"),
    ]


async def test_a_database_that_refuses_connections_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1 of loopback.
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", pool_size=1)
    watcher = ControlWatcher(engine, GROUP)
    caplog.set_level(logging.INFO)
    try:
        for _ in range(3):
            await refreshed(watcher)
        reason = (
            f"partition controls of group {GROUP!r} not read (ConnectionRefusedError: "
            "[Errno 111] Connect call failed ('127.0.0.1', 1)): pauses and reloads "
            "operators ask for may not apply; retrying with a jittered backoff of up to 0 s"
        )
        assert about_controls(caplog) == [("WARNING", reason)]
        assert metrics.readiness.conditions.get("controls:read") == reason
    finally:
        watcher.problems.clear("read")
        await engine.dispose()
    assert "controls:read" not in metrics.readiness.conditions
