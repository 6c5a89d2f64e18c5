"""Trimming a million expired events while the persister ingests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import event_resources, events
from tests.integration.support import (
    count,
    create_topic,
    end_offsets,
    running,
    send,
    settings_for,
    unique,
    wait_persisted,
)
from worker.core.leader import acquire, release
from worker.core.settings import Settings
from worker.devtools.loadgen import messages
from worker.devtools.stack import StackInfo
from worker.pipeline.persister import Persister
from worker.services.retention import trim

EXPIRED = 1_000_000
KEPT_OLD = 1_000
# Small enough that the ingest ends well before the trim of EXPIRED events.
BACKLOG = 25_000

# Written by the database itself: a million rows in seconds, not minutes.
OLD_ROWS = """
INSERT INTO events (id, occurred, event, resource_id, resource, related_resource_ids,
                    related, payload, received)
SELECT gen_random_uuid(), now() - make_interval(days => :days) - i * interval '1 ms',
       'old.event', 'r' || (i % 1000), '{"prefect.resource.id": "r"}', '[]', '[]',
       '{"n": 1}', now() - make_interval(days => :days)
FROM generate_series(1, :n) AS i
"""
OLD_RESOURCES = """
INSERT INTO event_resources (event_id, resource_role, resource_id, occurred, resource)
SELECT id, '', resource_id, occurred, '{}' FROM events WHERE event = 'old.event'
"""


async def ingest_time(
    stack_info: StackInfo, engine: AsyncEngine, settings: Settings, topic: str, seed: int
) -> float:
    """Send BACKLOG events, then run a persister until they are stored."""
    await send(stack_info, topic, messages(BACKLOG, seed=seed))
    ends = await end_offsets(stack_info, topic, 4)
    started = time.monotonic()
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, ends, timeout_s=120)
    return time.monotonic() - started


@contextmanager
def deletes_captured(engine: AsyncEngine) -> Iterator[dict[str, list[Any]]]:
    """The DELETE statements run on `engine`, each with the parameters of
    every time it ran."""
    statements: dict[str, list[Any]] = {}

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "DELETE FROM" in statement.upper():
            statements.setdefault(statement, []).append(parameters)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)


async def assert_batches_are_range_scans(
    engine: AsyncEngine, statements: dict[str, list[Any]]
) -> None:
    """Each statement the trim ran on the partition holding the million rows
    (the DEFAULT one: they are older than any partition), the first batch's
    and the one the later batches run from where the last ended (with a
    middle batch's parameters), reads an index range on `occurred`, bounded
    below too for the later batches, checks the lease, and deletes by TID."""
    checked = 0
    for statement, runs in statements.items():
        table = statement.split("DELETE FROM", 1)[1].split()[0]
        if table not in ("events_default", "event_resources_default"):
            continue
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(f"EXPLAIN {statement}", runs[len(runs) // 2])
            plan = [row[0] for row in result]
        index = "occurred_idx" if table == "events_default" else "pkey"
        text_plan = "\n".join(plan)
        assert f"Index Scan using {table}_{index}" in text_plan, text_plan
        assert "Tid Scan" in text_plan, text_plan
        assert "leader_leases" in text_plan, text_plan
        bounds = [line for line in plan if "Index Cond" in line and "occurred <" in line]
        assert len(bounds) == 1, text_plan
        assert ("occurred >=" in bounds[0]) == ("occurred >=" in statement), text_plan
        checked += 1
    assert checked == 4, list(statements)


async def test_trim_a_million_while_ingesting(stack_info: StackInfo, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(OLD_ROWS), {"days": 10, "n": EXPIRED})
        await conn.execute(text(OLD_ROWS), {"days": 6, "n": KEPT_OLD})
        await conn.execute(text(OLD_RESOURCES))
        await conn.execute(text("ANALYZE events"))
        await conn.execute(text("ANALYZE event_resources"))
    topic = unique("trim-load")
    await create_topic(stack_info, topic, 4)
    settings = settings_for(stack_info, topic, retention="7d", trim_batch_size=10_000)

    alone_s = await ingest_time(stack_info, engine, settings, topic, seed=91)
    lease = await acquire(engine, "retention", "trim-load", timedelta(minutes=5))
    assert lease is not None
    with deletes_captured(engine) as statements:
        trimming = asyncio.create_task(trim(engine, settings, lease))
        beside_s = await ingest_time(stack_info, engine, settings, topic, seed=92)
        assert not trimming.done(), "the trim ended before the ingest: nothing was measured"
        trimmed = await trimming
    await assert_batches_are_range_scans(engine, statements)
    await release(engine, lease)

    print(
        f"\ningest of {BACKLOG} events: {BACKLOG / alone_s:.0f} events/s alone, "
        f"{BACKLOG / beside_s:.0f} while trimming {EXPIRED} (ratio {alone_s / beside_s:.2f})"
    )
    assert (trimmed.events, trimmed.resources) == (EXPIRED, EXPIRED)
    assert alone_s / beside_s > 0.25
    # Nothing newer than the cutoff was touched: the 6-day-old rows and every
    # fresh event are there.
    assert await count(engine, events) == KEPT_OLD + 2 * BACKLOG
    async with engine.connect() as conn:
        kept = select(func.count()).where(event_resources.c.resource_id.like("r%"))
        assert (await conn.execute(kept)).scalar_one() == KEPT_OLD
