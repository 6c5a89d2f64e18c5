"""Retention while a reader holds an expired partition: the trims go on
around it, and it is dropped once the reader lets go."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.table_partitions import floor
from schemas.tables import event_resources, events
from tests.integration.support import count, settings_for
from tests.integration.test_table_partitions import day_name, store_at
from worker.core import metrics
from worker.core.leader import acquire, release
from worker.devtools.stack import StackInfo
from worker.services import table_partitions
from worker.services.retention import Trimmed, trim
from worker.services.table_partitions import drop_expired, ensure, partitions

DAY = timedelta(days=1)
NOON = floor(datetime.now(UTC), DAY) + timedelta(hours=12)


def lock_timeouts() -> float:
    value = metrics.registry.get_sample_value("persister_trim_lock_timeouts_total")
    assert value is not None
    return value


async def events_partitions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return {p.name for p in await partitions(conn, "events")}


async def test_a_reader_holding_an_expired_partition_does_not_stop_retention(
    stack_info: StackInfo,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(table_partitions, "LOCK_TIMEOUT", "300ms")
    # Nothing older than the days of this test is left by another.
    await drop_expired(engine, NOON - 12 * DAY, None, pause_factor=0)
    await ensure(engine, NOON - 12 * DAY, NOON + DAY, DAY)
    held = day_name("events", NOON - 10 * DAY)
    held_resources = await store_at(engine, NOON - 10 * DAY, 100)
    await store_at(engine, NOON - 9 * DAY, 50)  # wholly expired too: dropped
    straddling = await store_at(engine, NOON - 7 * DAY - timedelta(hours=1), 40)
    await store_at(engine, NOON - 7 * DAY + timedelta(hours=1), 30)  # kept by the first
    settings = settings_for(stack_info, "x", retention="7d")
    lease = await acquire(engine, "retention", "t", timedelta(seconds=60))
    assert lease is not None
    before = lock_timeouts()
    caplog.set_level(logging.INFO)
    try:
        async with engine.connect() as reader:
            await reader.begin()
            # An open transaction that read the partition: it holds its lock.
            await reader.exec_driver_sql(f"SELECT count(*) FROM {held}")  # noqa: S608

            first = await trim(engine, settings, lease, now=NOON)
            # Days 12, 11, 9 and 8 before dropped whole; the held day's rows and
            # the straddling day's expired ones deleted row by row.
            assert first == Trimmed(held_resources + straddling, 140, 4)
            assert held in await events_partitions(engine)

            # A day later: the day that straddled is wholly expired now.
            later = NOON + DAY
            expired_now = await store_at(engine, later - 7 * DAY - timedelta(hours=1), 25)
            kept = await store_at(engine, later - 7 * DAY + timedelta(hours=1), 15)
            second = await trim(engine, settings, lease, now=later)
            assert second == Trimmed(expired_now, 25, 1)
            assert held in await events_partitions(engine)
            await reader.rollback()

        third = await trim(engine, settings, lease, now=later)
    finally:
        await release(engine, lease)
    assert third == Trimmed(0, 0, 1)
    assert held not in await events_partitions(engine)
    assert await count(engine, events) == 15
    assert await count(engine, event_resources) == kept
    assert lock_timeouts() - before == 2
    about_it = [(r.levelname, r.getMessage()) for r in caplog.records if held in r.getMessage()]
    assert [level for level, _ in about_it if level == "WARNING"] == ["WARNING"]
    assert ("INFO", f"expired partition {held} dropped at last") in about_it
    assert "its lock was not obtained within 300ms" in about_it[0][1]
