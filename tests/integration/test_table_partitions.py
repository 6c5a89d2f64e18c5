"""Time partitions: created ahead, a DEFAULT partition for any other date,
idempotency across partitions, and dropping expired partitions under the
lease's fence."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.table_partitions import Range, floor
from schemas.tables import event_resources, events
from tests.integration.support import count, settings_for, wait_until
from tests.integration.test_retention import store
from tests.records import msgs
from worker.core.leader import acquire, release
from worker.core.settings import Limits
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.decoding import event_key, to_rows
from worker.pipeline.inserts import insert_events_and_resources
from worker.services import table_partitions
from worker.services.retention import trim
from worker.services.table_partitions import (
    drop_expired,
    ensure,
    ensure_for,
    partitions,
    pause_after,
)

DAY = timedelta(days=1)
NOW = datetime.now(UTC)

PLACED = text("SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1 ORDER BY 1")


async def placed(engine: AsyncEngine, table: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(PLACED.text.format(table=table)))
        return {str(name): int(n) for name, n in rows.all()}


def day_name(table: str, moment: datetime) -> str:
    return f"{table}_p{floor(moment, DAY):%Y%m%d}_0000"


async def write(engine: AsyncEngine, batch: list[dict[str, Any]]) -> tuple[int, int]:
    rows = to_rows(msgs([orjson.dumps(e) for e in batch]), Limits(), 10**6)
    resources = [r for e in rows.events for r in rows.resources[event_key(e)]]
    async with engine.begin() as conn:
        return await insert_events_and_resources(conn, rows.events, resources)


def events_at(*moments: datetime) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [make_event(rng, occurred=m, payload_bytes=10) for m in moments]


async def test_partitions_ahead_and_a_default_for_any_other_date(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    settings = settings_for(stack_info, "x", retention="7d", partitions_ahead=3)
    await ensure_for(engine, settings, NOW)
    async with engine.connect() as conn:
        found = await partitions(conn, "events")
        twins = await partitions(conn, "event_resources")
    starts = [p.range.start for p in found]
    first, last = floor(NOW - 7 * DAY, DAY), floor(NOW, DAY) + 3 * DAY
    # Every day from the retention cutoff to three past today (older ones may
    # be left by other tests), and none later.
    window = [first + i * DAY for i in range((last - first) // DAY + 1)]
    assert [s for s in starts if s >= first] == window
    assert [p.range for p in twins] == [p.range for p in found]
    assert await ensure_for(engine, settings, NOW) == 0

    far_past, far_future = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    batch = events_at(NOW, NOW - 3 * DAY, NOW + 2 * DAY, far_past, far_future)
    new, resources = await write(engine, batch)
    assert new == 5
    assert await placed(engine, "events") == {
        "events_default": 2,
        day_name("events", NOW - 3 * DAY): 1,
        day_name("events", NOW): 1,
        day_name("events", NOW + 2 * DAY): 1,
    }
    assert sum((await placed(engine, "event_resources")).values()) == resources


async def test_a_partition_created_while_a_batch_is_written_waits_for_it(
    engine: AsyncEngine,
) -> None:
    """The DDL takes the tables in the insert's order, so it queues behind a
    batch being written instead of deadlocking with it."""
    day = floor(datetime(2080, 1, 1, tzinfo=UTC), DAY)
    async with engine.connect() as writer:
        await writer.begin()
        # What the insert takes first: `events`, for the whole transaction.
        await writer.exec_driver_sql("LOCK TABLE events IN ROW EXCLUSIVE MODE")
        creating = asyncio.create_task(ensure(engine, day, day + DAY, DAY))
        await wait_until(lambda: _waiting_on(engine, "events"), 10, "DDL waiting for events")
        rows = to_rows(msgs([orjson.dumps(e) for e in events_at(NOW)]), Limits(), 10**6)
        resources = [r for e in rows.events for r in rows.resources[event_key(e)]]
        # Then `event_resources`: free, so the batch goes through.
        assert await insert_events_and_resources(writer, rows.events, resources) == (
            1,
            len(resources),
        )
        await writer.commit()
    assert await asyncio.wait_for(creating, 10) == 1
    async with engine.connect() as conn:
        for table in ("events", "event_resources"):
            assert Range(day, day + DAY) in [p.range for p in await partitions(conn, table)]
    assert await count(engine, events) == 1


async def _waiting_on(engine: AsyncEngine, table: str) -> bool:
    query = text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query, {"t": table})).scalar_one()) > 0


async def test_the_same_id_and_occurred_is_stored_once(any_engine: AsyncEngine) -> None:
    [event] = events_at(NOW)
    first = await write(any_engine, [event])
    assert first[0] == 1 and first[1] >= 1
    assert await write(any_engine, [event]) == (0, 0)
    # The same id with another `occurred`, in another partition: another row,
    # with its own resource rows.
    moved = {**event, "occurred": (NOW - 3 * DAY).isoformat()}
    assert await write(any_engine, [moved]) == first
    assert await write(any_engine, [moved]) == (0, 0)
    assert await count(any_engine, events) == 2
    assert await count(any_engine, event_resources) == 2 * first[1]


async def test_a_drop_is_fenced_by_the_lease_epoch(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    await ensure(engine, NOW - 12 * DAY, NOW, DAY)
    expired = await store(engine, timedelta(days=10), 300)
    kept = await store(engine, timedelta(days=3), 200)
    ttl = timedelta(seconds=30)
    paused = await acquire(engine, "retention", "a", ttl)
    assert paused is not None
    # a is paused past its lease; b takes it over.
    await release(engine, paused)
    leader = await acquire(engine, "retention", "b", ttl)
    assert leader is not None and leader.epoch == paused.epoch + 1

    cutoff = NOW - 7 * DAY
    assert await drop_expired(engine, cutoff, paused) == []
    assert await count(engine, events) == 500
    old_day = day_name("events", NOW - 10 * DAY)
    async with engine.connect() as conn:
        assert old_day in {p.name for p in await partitions(conn, "events")}

    dropped = [d.name for d in await drop_expired(engine, cutoff, leader)]
    assert old_day in dropped
    assert all(name < day_name("events", cutoff) for name in dropped)
    async with engine.connect() as conn:
        left = {p.name for p in await partitions(conn, "events")}
        left_twins = {p.name for p in await partitions(conn, "event_resources")}
    assert not set(dropped) & left
    assert not {n.replace("events_", "event_resources_") for n in dropped} & left_twins
    assert await count(engine, events) == 200
    assert await count(engine, event_resources) == kept
    assert expired > 0


async def test_postgresql_refuses_a_concurrent_detach_beside_the_default_partition(
    engine: AsyncEngine,
) -> None:
    """Why the drop takes the parent's lock for its detach (docs/storage.md, Retention)."""
    await ensure(engine, NOW - DAY, NOW, DAY)
    name = day_name("events", NOW - DAY)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(DBAPIError, match="default partition"):
            await conn.exec_driver_sql(f"ALTER TABLE events DETACH PARTITION {name} CONCURRENTLY")
        assert name in {p.name for p in await partitions(conn, "events")}


async def tables_like(engine: AsyncEngine, pattern: str) -> list[str]:
    query = text("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE :p")
    async with engine.connect() as conn:
        return sorted(str(n) for n in (await conn.execute(query, {"p": pattern})).scalars())


async def test_a_partition_left_detached_by_a_stopped_trim_is_dropped_by_the_next(
    engine: AsyncEngine,
) -> None:
    await ensure(engine, NOW - 12 * DAY, NOW, DAY)
    await store(engine, timedelta(days=10), 100)
    await store(engine, timedelta(days=9), 100)
    kept = await store(engine, timedelta(days=3), 50)
    leader = await acquire(engine, "retention", "a", timedelta(seconds=30))
    assert leader is not None
    stopped, archived = day_name("events", NOW - 10 * DAY), day_name("events", NOW - 9 * DAY)
    async with engine.begin() as conn:
        # A trim that stopped between its detach and its drop...
        for table, name in (("events", stopped), ("event_resources", _twin(stopped))):
            await conn.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {name}")
            await conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {name}_expired")
        # ...and a day an operator detached to archive it.
        for table, name in (("events", archived), ("event_resources", _twin(archived))):
            await conn.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {name}")
    assert len(await tables_like(engine, "%\\_expired")) == 2

    try:
        dropped = [d.name for d in await drop_expired(engine, NOW - 7 * DAY, leader)]
        assert stopped not in dropped and archived not in dropped
        assert await tables_like(engine, "%\\_expired") == []
        assert await tables_like(engine, archived) == [archived]
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {archived}, {_twin(archived)}")
    assert await count(engine, events) == 50
    assert await count(engine, event_resources) == kept


async def indexes_of(engine: AsyncEngine, table: str) -> int:
    query = text("SELECT count(*) FROM pg_index WHERE indrelid = CAST(:t AS regclass)")
    async with engine.connect() as conn:
        return int((await conn.execute(query, {"t": table})).scalar_one())


async def test_files_go_in_fenced_steps_and_a_stopped_removal_is_finished_by_the_next(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each index, then the table, one fenced step each; a leader that loses
    the lease between steps stops, and the next one finishes the tables."""
    await ensure(engine, NOW - 12 * DAY, NOW, DAY)
    await store(engine, timedelta(days=10), 100)
    kept = await store(engine, timedelta(days=3), 50)
    name = day_name("events", NOW - 10 * DAY)
    first = await acquire(engine, "retention", "a", timedelta(seconds=30))
    assert first is not None
    fenced = table_partitions._fenced
    calls = 0

    async def losing_after_the_third_step(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 4:  # the detach, then two steps of removal
            await release(engine, first)
        return await fenced(*args)

    monkeypatch.setattr(table_partitions, "_fenced", losing_after_the_third_step)
    assert await drop_expired(engine, NOW - 7 * DAY, first) == []
    # The oldest expired day: detached, then two of its steps done.
    twin, left = await tables_like(engine, "%\\_expired")
    assert twin == _twin(left)
    # Of four indexes (the key and three more), two are gone; the twin's
    # two are still there.
    assert await indexes_of(engine, left) == 2
    assert await indexes_of(engine, twin) == 2

    monkeypatch.setattr(table_partitions, "_fenced", fenced)
    second = await acquire(engine, "retention", "b", timedelta(seconds=30))
    assert second is not None
    started = time.monotonic()
    dropped = await drop_expired(engine, NOW - 7 * DAY, second)
    # After each step, a pause four times as long (the leftovers' steps and
    # pauses come on top).
    steps_s = [s for d in dropped for s in d.steps_s]
    paced_s = sum(steps_s) + sum(pause_after(s) for s in steps_s)
    assert time.monotonic() - started >= paced_s + sum(d.detach_s for d in dropped)
    assert await tables_like(engine, "%\\_expired") == []
    assert name in [d.name for d in dropped]
    # Each: four indexes and the table, then the twin's two and the table.
    assert {len(d.steps_s) for d in dropped} == {8}
    assert await count(engine, events) == 50
    assert await count(engine, event_resources) == kept


def _twin(name: str) -> str:
    return name.replace("events_", "event_resources_", 1)


async def store_at(engine: AsyncEngine, occurred: datetime, n: int) -> int:
    """n events that occurred then; returns their resource rows."""
    return (await write(engine, events_at(*[occurred] * n)))[1] if n else 0


async def test_trim_drops_whole_partitions_and_deletes_the_rest_row_by_row(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    # Noon, so the cutoff (7 days before) is inside a partition.
    noon = floor(NOW, DAY) + timedelta(hours=12)
    await ensure(engine, noon - 12 * DAY, noon, DAY)
    await store_at(engine, noon - 10 * DAY, 300)  # a partition wholly expired
    # The partition straddling the cutoff: 7 days and 1 hour old is expired.
    straddling = await store_at(engine, noon - 7 * DAY - timedelta(hours=1), 40)
    kept = await store_at(engine, noon - 7 * DAY + timedelta(hours=1), 30)
    # Far in the past: in the DEFAULT partition.
    ancient = await store_at(engine, noon - 400 * DAY, 20)
    settings = settings_for(stack_info, "x", retention="7d")
    lease = await acquire(engine, "retention", "t", timedelta(seconds=30))
    assert lease is not None
    try:
        done = await trim(engine, settings, lease, now=noon)
    finally:
        await release(engine, lease)
    assert (done.events, done.resources) == (60, straddling + ancient)
    # Days 12 to 8 before: wholly older than the cutoff.
    assert done.partitions == 5
    assert await count(engine, events) == 30
    assert await count(engine, event_resources) == kept
    async with engine.connect() as conn:
        oldest = (await conn.execute(select(events.c.occurred).order_by("occurred"))).scalar()
    assert oldest == noon - 7 * DAY + timedelta(hours=1)
