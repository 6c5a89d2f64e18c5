"""PostgreSQL side of the benchmark: plain asyncpg connections for truncating,
counting, waiting on stored offsets and latency percentiles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from worker.devtools.bench.results import Latency

# asyncpg ships no type information.
Connection = Any

TABLES = ("events", "event_resources", "persister_consumer_offsets", "persister_dead_letters")

# Seconds between the record timestamp and the insert's transaction start.
LATENCY_SQL = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
FROM (SELECT extract(epoch FROM recorded - greatest(received, $1::timestamptz)) AS d
      FROM events WHERE $2::uuid[] IS NULL OR id = ANY($2::uuid[])) AS latencies
"""


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL of the local stack as a libpq URL asyncpg accepts."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def truncate(conn: Connection) -> None:
    """Empty the tables and flush what earlier phases left dirty, so a checkpoint
    triggered by one phase's writes does not land in the next phase's timing."""
    await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    await conn.execute("CHECKPOINT")


@dataclass(frozen=True)
class Counts:
    events: int
    resources: int
    dead_letters: int


async def counts(conn: Connection) -> Counts:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_resources),"
        " (SELECT count(*) FROM persister_dead_letters)"
    )
    return Counts(int(row[0]), int(row[1]), int(row[2]))


async def count_events(conn: Connection, ids: Sequence[UUID]) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events WHERE id = ANY($1)", ids))


async def stored_offsets(conn: Connection, group_id: str, topic: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM persister_consumer_offsets"
        " WHERE group_id = $1 AND topic = $2",
        group_id,
        topic,
    )
    return {int(row[0]): int(row[1]) for row in rows}


# Each worker transaction stamps its rows with one `recorded` (now(), its
# start): the rows after the first transaction over the time from its start
# to the last one's is the rate once writing, start-up left out.
WRITING_SQL = """
SELECT sum(n) - (array_agg(n ORDER BY recorded))[1],
       extract(epoch FROM max(recorded) - min(recorded))
FROM (SELECT recorded, count(*) AS n FROM events WHERE recorded >= $1 GROUP BY recorded) AS t
"""


async def writing(conn: Connection, since: datetime) -> tuple[int, float] | None:
    """(events, seconds) written from the first transaction since `since` to
    the last (see WRITING_SQL); None with fewer than two transactions."""
    events, seconds = await conn.fetchrow(WRITING_SQL, since)
    if not events or not seconds:
        return None
    return int(events), float(seconds)


async def latency(
    conn: Connection,
    name: str,
    *,
    not_before: datetime | None = None,
    ids: Sequence[UUID] | None = None,
    note: str = "",
) -> Latency:
    """p50/p99 of recorded - received over `ids` (all events when None).

    With `not_before`, a record counts from then at the earliest (for a
    backlog: from when the worker started)."""
    floor = not_before or datetime.fromtimestamp(0, UTC)
    rows, p50, p99 = await conn.fetchrow(LATENCY_SQL, floor, ids)
    return Latency(name, int(rows), float(p50 or 0) * 1000, float(p99 or 0) * 1000, note)
