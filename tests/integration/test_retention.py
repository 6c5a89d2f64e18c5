"""Retention: batched deletes, the leader lease and its fence, and trimming."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from schemas.tables import event_resources, events
from tests.integration.support import count, settings_for, wait_until
from tests.records import msgs
from worker.core.leader import acquire, current, holds, release
from worker.core.settings import Limits
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.decoding import event_key, to_rows
from worker.pipeline.inserts import insert_events_and_resources
from worker.services.batch_delete import batch_delete
from worker.services.retention import trim

NOW = datetime.now(UTC)


async def store(engine: AsyncEngine, age: timedelta, n: int, name: str | None = None) -> int:
    """Insert n events that occurred `age` ago; returns their resource rows."""
    rng = random.Random()
    batch = [make_event(rng, occurred=NOW - age, payload_bytes=10) for _ in range(n)]
    for e in batch:
        e["event"] = name or e["event"]
    rows = to_rows(msgs([orjson.dumps(e) for e in batch]), Limits(), 10**6)
    written = 0
    async with engine.begin() as conn:
        for start in range(0, n, 5_000):
            chunk = rows.events[start : start + 5_000]
            resources = [r for e in chunk for r in rows.resources[event_key(e)]]
            written += (await insert_events_and_resources(conn, chunk, resources))[1]
    return written


@contextmanager
def deletes_counted(engine: AsyncEngine) -> Iterator[list[str]]:
    statements: list[str] = []

    def seen(*args: Any) -> None:
        if "DELETE FROM" in args[2].upper():
            statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)


async def test_batch_delete_in_batches(any_engine: AsyncEngine) -> None:
    await store(any_engine, timedelta(days=10), 25_000)
    await store(any_engine, timedelta(days=1), 100)
    old = events.c.occurred < NOW - timedelta(days=5)
    sessions = async_sessionmaker(any_engine)

    with deletes_counted(any_engine) as statements:
        async with sessions() as session:
            assert await batch_delete(session, events, old, batch_size=10_000) == 25_000
    assert len(statements) == 3
    assert await count(any_engine, events) == 100

    with deletes_counted(any_engine) as statements:
        async with sessions() as session:
            assert await batch_delete(session, events, old, batch_size=10_000) == 0
    assert len(statements) == 1
    assert await count(any_engine, events) == 100


async def test_ordered_batches_each_start_where_the_last_ended(any_engine: AsyncEngine) -> None:
    await store(any_engine, timedelta(days=10), 25)  # one time, across three batches
    await store(any_engine, timedelta(days=9), 20)
    await store(any_engine, timedelta(days=1), 5)
    old = events.c.occurred < NOW - timedelta(days=5)
    with deletes_counted(any_engine) as statements:
        async with async_sessionmaker(any_engine)() as session:
            deleted = await batch_delete(session, events, old, 10, order_by=events.c.occurred)
    assert deleted == 45
    assert await count(any_engine, events) == 5
    # 10, 10, 10, 10, 5: on PostgreSQL the first from the oldest row, the
    # others from the last time deleted (their index scans skip the entries
    # of what was deleted before); SQLite removes those entries as it deletes.
    assert len(statements) == 5
    assert "occurred >=" not in statements[0]
    bounded = any_engine.dialect.name == "postgresql"
    assert ["occurred >=" in s for s in statements[1:]] == [bounded] * 4


async def test_batch_delete_on_a_composite_key(any_engine: AsyncEngine) -> None:
    resources = await store(any_engine, timedelta(days=10), 300)
    old = event_resources.c.occurred < NOW - timedelta(days=5)
    async with async_sessionmaker(any_engine)() as session:
        assert await batch_delete(session, event_resources, old, batch_size=100) == resources
    assert await count(any_engine, event_resources) == 0


async def test_lease_has_one_holder_and_a_growing_epoch(any_engine: AsyncEngine) -> None:
    ttl = timedelta(seconds=0.5)
    first = await acquire(any_engine, "retention", "a", ttl)
    assert first is not None and first.epoch == 1
    assert await acquire(any_engine, "retention", "b", ttl) is None
    renewed = await acquire(any_engine, "retention", "a", ttl)
    assert renewed is not None and renewed.epoch == 1

    async def taken_by_b() -> bool:
        return await acquire(any_engine, "retention", "b", timedelta(seconds=30)) is not None

    await wait_until(taken_by_b, 5, "b to take the expired lease")
    holder = await current(any_engine, "retention")
    assert holder is not None and (holder.holder, holder.epoch) == ("b", 2)

    # a, paused past its expiry, wakes up and deletes under its old lease: nothing.
    await store(any_engine, timedelta(days=10), 50)
    async with async_sessionmaker(any_engine)() as session:
        fenced = (events.c.occurred < NOW) & holds(renewed)
        assert await batch_delete(session, events, fenced) == 0
    assert await count(any_engine, events) == 50

    await release(any_engine, holder)
    again = await acquire(any_engine, "retention", "a", ttl)
    assert again is not None and again.epoch == 3


async def test_trim_with_overrides(any_engine: AsyncEngine, stack_info: StackInfo) -> None:
    old_beats = await store(any_engine, timedelta(days=2), 40, name="heartbeat.agent")
    young_beats = await store(any_engine, timedelta(hours=12), 30, name="heartbeat.agent")
    kept = await store(any_engine, timedelta(days=6), 20)
    expired = await store(any_engine, timedelta(days=8), 10)
    settings = settings_for(
        stack_info, "x", retention="7d", retention_overrides={"heartbeat.*": "1d"}
    )

    dry = await trim(any_engine, settings, lease=None, dry_run=True)
    assert (dry.events, dry.resources) == (50, old_beats + expired)
    assert await count(any_engine, events) == 100

    done = await trim(any_engine, settings, lease=None)
    assert (done.events, done.resources) == (50, old_beats + expired)
    async with any_engine.connect() as conn:
        names = (await conn.execute(select(events.c.event))).scalars().all()
    assert sum(name == "heartbeat.agent" for name in names) == 30
    assert len(names) == 50
    assert await count(any_engine, event_resources) == young_beats + kept
