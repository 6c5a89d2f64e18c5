"""Creating time partitions ahead and dropping expired ones (PostgreSQL; see
`schemas.partitions` for the ranges and the DEFAULT partition's rule).

Dropping is fenced like the trimmer's deletes, in two transactions per
partition, each of which first locks the lease row with the lease's holder,
epoch and expiry as its condition: the first detaches the partition of both
tables and renames it `..._expired`, the second drops it. A holder that lost
the lease finds no row and does nothing; while the row is locked, no other
replica can take the lease, and a holder paused mid-transaction has it
rolled back by the server (`idle_in_transaction_session_timeout`, half the
lease TTL) before the lease can pass on. Only the detach takes the parent's
lock, for a catalog change (writers queue behind it; `lock_timeout` bounds
the wait); dropping the files holds nobody up. A table left `..._expired` by
a trim that stopped in between is dropped by the next. `DETACH ...
CONCURRENTLY` would not block writers at all, but PostgreSQL refuses it on a
table with a DEFAULT partition, and it cannot run inside a transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, MetaData, Table, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.partitions import (
    EXPIRED_SQL,
    PARTITIONED,
    PARTITIONS_SQL,
    Range,
    create_sql,
    default_name,
    expired_name,
    gaps,
)
from schemas.tables import event_resources, events
from worker.core.conditions import Conditions
from worker.core.leader import Lease, lock_if_held
from worker.core.settings import Settings

logger = logging.getLogger(__name__)

LOCK_TIMEOUT = "2s"
# SQLSTATE of a lock not obtained within lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
DUPLICATE_TABLE = "42P07"
OVERLAPPING_PARTITION = "42P17"

TABLES = {"events": events, "event_resources": event_resources}
_copies: dict[str, Table] = {}

crowded = Conditions("partitions", unready=False)


@dataclass(frozen=True)
class Partition:
    name: str
    range: Range


def partition_table(table: Table, name: str) -> Table:
    """`table`'s columns under a partition's name, to address it directly."""
    if name not in _copies:
        columns = [Column(c.name, c.type, nullable=c.nullable) for c in table.columns]
        _copies[name] = Table(name, MetaData(), *columns)
    return _copies[name]


async def partitions(conn: AsyncConnection, table: str) -> list[Partition]:
    """The partitions of `table` with bounds, oldest first (not the DEFAULT one)."""
    rows = await conn.execute(text(PARTITIONS_SQL), {"parent": table})
    return [Partition(name, Range(start, end)) for name, start, end in rows]


async def ensure(engine: AsyncEngine, start: datetime, end: datetime, width: timedelta) -> int:
    """Create the partitions missing between `start` and `end` (both tables,
    same bounds); returns how many ranges were created."""
    async with engine.connect() as conn:
        existing = [p.range for p in await partitions(conn, "events")]
    created = 0
    for r in gaps(existing, start, end, width):
        if await _create(engine, r):
            created += 1
    if created:
        logger.info("created %d partitions of events and event_resources up to %s", created, end)
    return created


async def ensure_for(engine: AsyncEngine, settings: Settings, now: datetime) -> int:
    """Partitions from the retention cutoff to `partitions_ahead` widths past now."""
    width = settings.partition_width
    ahead = now + settings.partitions_ahead * width
    return await ensure(engine, now - settings.retention, ahead, width)


async def _create(engine: AsyncEngine, r: Range) -> bool:
    key = f"{r.start.isoformat()}"
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            for table in PARTITIONED:
                default = partition_table(TABLES[table], default_name(table))
                query = select(default.c.occurred).where(
                    default.c.occurred >= r.start, default.c.occurred < r.end
                )
                if (await conn.execute(query.limit(1))).first() is not None:
                    crowded.raise_(
                        key,
                        f"{default_name(table)} holds rows from {r.start} to {r.end}: that "
                        "range gets no partition of its own, and its rows are trimmed row "
                        "by row",
                        logging.WARNING,
                    )
                    return False
            for table in PARTITIONED:
                await conn.exec_driver_sql(create_sql(table, r))
    except DBAPIError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code in (DUPLICATE_TABLE, OVERLAPPING_PARTITION):
            return False  # made meanwhile by another replica, or a migration
        if code != LOCK_NOT_AVAILABLE:
            raise
        logger.info("partition from %s not created yet: table busy; trying at the next trim", r)
        return False
    crowded.clear(key)
    return True


async def drop_expired(engine: AsyncEngine, cutoff: datetime, lease: Lease | None) -> list[str]:
    """Detach and drop the partitions (of both tables) that end at or before
    `cutoff`, while `lease` is held; returns the events partitions dropped.
    Each is detached in one short transaction (the only step that holds
    writers up) and dropped in the next; one left detached by a trim that
    stopped in between is dropped first."""
    async with engine.connect() as conn:
        by_table = {t: await partitions(conn, t) for t in PARTITIONED}
        leftovers = [str(name) for name in (await conn.execute(text(EXPIRED_SQL))).scalars()]
    if leftovers and not await _fenced(engine, lease, [_drop_sql(n) for n in leftovers]):
        return []
    dropped = []
    for partition in by_table["events"]:
        if partition.range.end > cutoff:
            break
        twins = [p.name for p in by_table["event_resources"] if p.range == partition.range]
        names = [partition.name, *twins]
        started = time.monotonic()
        detached = await _fenced(engine, lease, [sql for n in names for sql in _detach_sql(n)])
        detach_s = time.monotonic() - started
        if not detached or not await _fenced(
            engine, lease, [_drop_sql(expired_name(name)) for name in names]
        ):
            logger.info("no longer leading: dropping partitions stopped")
            break
        dropped.append(partition.name)
        logger.info(
            "dropped expired partition %s and its event_resources twin "
            "(detached in %.3f s, files removed in %.3f s)",
            partition.name,
            detach_s,
            time.monotonic() - started - detach_s,
        )
    return dropped


def _detach_sql(name: str) -> list[str]:
    # Names come from the catalog and match schemas.partitions' pattern. The
    # new name marks it as expired, for a later trim to drop if this one
    # stops before dropping it.
    parent = "events" if name.startswith("events_") else "event_resources"
    return [
        f"ALTER TABLE {parent} DETACH PARTITION {name}",
        f"ALTER TABLE {name} RENAME TO {expired_name(name)}",
    ]


def _drop_sql(name: str) -> str:
    return f"DROP TABLE {name}"


async def _fenced(engine: AsyncEngine, lease: Lease | None, statements: list[str]) -> bool:
    """Run `statements` in one transaction that first locks the lease row
    while `lease` is held; False (nothing run) when it is lost."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if lease is not None and (await conn.execute(lock_if_held(lease))).first() is None:
            return False
        for statement in statements:
            await conn.exec_driver_sql(statement)
    return True


async def straddling(engine: AsyncEngine, table: Table, cutoff: datetime) -> list[Table]:
    """What a trim must still delete rows from, row by row: the partitions
    holding some rows older than `cutoff` (not dropped), and the DEFAULT one."""
    async with engine.connect() as conn:
        found = await partitions(conn, table.name)
    names = [p.name for p in found if p.range.start < cutoff]
    return [partition_table(table, n) for n in [*names, default_name(table.name)]]
