"""The storage phases: COPY into the previous schema on the previous server
settings (the reference), and the same phases again on tables that already
hold events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import create_async_engine

from worker.devtools.bench import ceilings, db, reference, server
from worker.devtools.bench.context import Bench
from worker.devtools.bench.dataset import CopyChunk, with_fresh_ids
from worker.devtools.bench.preload import preload
from worker.devtools.bench.results import (
    PREVIOUS_COPY,
    WORKER_1,
    WRITE_CEILING,
    Phase,
    Results,
    at_size,
)
from worker.devtools.bench.workers import run_backlog
from worker.services import table_partitions

log = logging.getLogger(__name__)

# Stored events spread over the days before the run, so the partition the
# run writes to holds its share of them, not all of them.
PRELOAD_DAYS = 2


async def previous_copy(
    database_url: str, chunks: Sequence[CopyChunk], name: str = PREVIOUS_COPY, **kw: bool
) -> Phase:
    """COPY into the previous schema with the server on its default settings."""
    await server.apply(database_url, server.DEFAULT_SETTINGS)
    try:
        return await ceilings.write(database_url, chunks, name=name, schema=reference.SCHEMA, **kw)
    finally:
        await server.apply(database_url, server.CURRENT_SETTINGS)


async def preload_both(database_url: str, events: int, results: Results) -> None:
    """Empty both schemas, then store `events` events in each."""
    end = datetime.now(UTC) - timedelta(hours=1)
    start = end - timedelta(days=PRELOAD_DAYS)
    engine = create_async_engine(database_url)
    try:
        await table_partitions.ensure(engine, start, end + timedelta(days=2), timedelta(days=1))
    finally:
        await engine.dispose()
    async with db.connect(database_url) as conn:
        await db.truncate(conn)
        # Indexes built once at the end: far faster than growing them row by
        # row, and a fresh index is, if anything, in better shape.
        await reference.create(conn, indexes=False)
        seconds = await preload(conn, reference.SCHEMA, events, start, end)
        await reference.create_indexes(conn)
        seconds += await preload(conn, "public", events, start, end)
        await conn.execute(f"VACUUM ANALYZE {', '.join(reference.TABLES)}")
        await conn.execute("VACUUM ANALYZE events, event_resources")
    results.preloaded = events
    results.preload_seconds = seconds


async def measure(bench: Bench, chunks: Sequence[CopyChunk], events: int, results: Results) -> None:
    """COPY (previous and current schema) and the 1-replica worker, each on
    top of `events` stored events. The COPY phases write the rows under new
    ids, so the worker's rows are new to the tables too."""
    url = bench.info.database_url
    log.info("storing %d events in each schema", events)
    await preload_both(url, events, results)
    at = at_size(events)
    fresh = with_fresh_ids(chunks)
    log.info("previous schema, %s", at)
    results.phases.append(await previous_copy(url, fresh, PREVIOUS_COPY + at, on_empty=False))
    log.info("write ceiling, %s", at)
    phase = await ceilings.write(
        url, with_fresh_ids(chunks), name=WRITE_CEILING + at, on_empty=False
    )
    results.phases.append(phase)
    log.info("worker, 1 replica, %s", at)
    run = await run_backlog(bench, WORKER_1 + at, 1, on_empty=False)
    results.phases.append(run.phase)
    results.checks.extend(run.checks)
