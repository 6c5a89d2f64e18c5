"""Creating time partitions ahead and dropping expired ones (PostgreSQL; see
`schemas.table_partitions` for the ranges and the DEFAULT partition's rule).

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
a trim that stopped in between is dropped by the next. A partition whose lock
is not obtained within LOCK_TIMEOUT (a reader holds it) is skipped by this
trim, which goes on with the others, and tried again by the next: one
WARNING while that lasts, one INFO when it is dropped at last, and
`persister_trim_lock_timeouts_total` counts each time.

The files go in steps, each index and then each table in a fenced
transaction of its own, with a pause after each step four times as long as
it took. Removing a file costs the server time in proportion to its size
(on ext4 with online discard, about a quarter of a second per GB), and the
disk's work slows the writers' commits while it lasts: in short steps with
pauses it takes a fifth of their time, instead of all of it for seconds on
end. `DETACH ...
CONCURRENTLY` would not block writers at all, but PostgreSQL refuses it on a
table with a DEFAULT partition, and it cannot run inside a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, MetaData, Table, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.table_partitions import (
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
from worker.core import metrics
from worker.core.conditions import Conditions
from worker.core.leader import Lease, lock_if_held
from worker.core.settings import Settings

logger = logging.getLogger(__name__)

LOCK_TIMEOUT = "2s"
# After each step of removing a dropped partition's files, a pause this many
# times as long as the step took, at most MAX_PAUSE_S.
PAUSE_FACTOR = 4.0
MAX_PAUSE_S = 10.0
INDEXES_SQL = """
SELECT i.relname, c.conname
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
WHERE x.indrelid = CAST(:table AS regclass)
ORDER BY i.relname
"""
# SQLSTATE of a lock not obtained within lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
DUPLICATE_TABLE = "42P07"
OVERLAPPING_PARTITION = "42P17"

TABLES = {"events": events, "event_resources": event_resources}
_copies: dict[str, Table] = {}

crowded = Conditions("partitions", unready=False)
# Expired partitions a trim could not lock, by name (see the docstring).
busy = Conditions("trim_locks", unready=False)


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


@dataclass(frozen=True)
class Dropped:
    """An events partition dropped with its event_resources twin: seconds the
    detach took, and each step of removing the files."""

    name: str
    detach_s: float
    steps_s: tuple[float, ...]


async def drop_expired(
    engine: AsyncEngine, cutoff: datetime, lease: Lease | None, pause_factor: float = PAUSE_FACTOR
) -> list[Dropped]:
    """Detach and drop the partitions (of both tables) that end at or before
    `cutoff`, while `lease` is held; returns the events partitions dropped.
    Each is detached in one short transaction (the only step that holds
    writers up) and its files are removed in paced steps after it; one left
    detached by a trim that stopped in between is dropped first. One whose
    lock is not obtained in time is left to the next trim.
    `pause_factor`: see PAUSE_FACTOR."""
    async with engine.connect() as conn:
        by_table = {t: await partitions(conn, t) for t in PARTITIONED}
        leftovers = [str(name) for name in (await conn.execute(text(EXPIRED_SQL))).scalars()]
    if leftovers and not await _remove_leftovers(engine, lease, leftovers, pause_factor):
        return []
    dropped = []
    for partition in by_table["events"]:
        if partition.range.end > cutoff:
            break
        twins = [p.name for p in by_table["event_resources"] if p.range == partition.range]
        try:
            done = await _drop(engine, lease, [partition.name, *twins], pause_factor)
        except DBAPIError as exc:
            if not _lock_not_available(exc):
                raise
            _skipped(partition.name)
            continue
        if done is None:
            logger.info("no longer leading: dropping partitions stopped")
            break
        busy.clear(partition.name, f"expired partition {partition.name} dropped at last")
        dropped.append(done)
    return dropped


async def _drop(
    engine: AsyncEngine, lease: Lease | None, names: list[str], pause_factor: float
) -> Dropped | None:
    """Detach an events partition and its twins, then remove their files;
    None when the lease was lost."""
    started = time.monotonic()
    detached = await _fenced(engine, lease, [sql for n in names for sql in _detach_sql(n)])
    detach_s = time.monotonic() - started
    expired = [expired_name(n) for n in names]
    steps = await _remove(engine, lease, expired, pause_factor) if detached else None
    if steps is None:
        return None
    logger.info(
        "dropped expired partition %s and its event_resources twin (detached in "
        "%.3f s; files removed in %d steps, %.3f s in all, the longest %.3f s, "
        "over %.1f s)",
        names[0],
        detach_s,
        len(steps),
        sum(steps),
        max(steps),
        time.monotonic() - started - detach_s,
    )
    return Dropped(names[0], detach_s, tuple(steps))


async def _remove_leftovers(
    engine: AsyncEngine, lease: Lease | None, names: list[str], pause_factor: float
) -> bool:
    """Drop the tables a stopped trim left detached; False when the lease
    was lost. One that is locked is left for the next trim."""
    for name in names:
        original = name.removesuffix("_expired")
        try:
            if await _remove(engine, lease, [name], pause_factor) is None:
                return False
        except DBAPIError as exc:
            if not _lock_not_available(exc):
                raise
            _skipped(original)
            continue
        busy.clear(original, f"expired partition {original} dropped at last")
    return True


def _lock_not_available(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


def _skipped(name: str) -> None:
    metrics.trim_lock_timeouts.inc()
    busy.raise_(
        name,
        f"expired partition {name} not dropped: its lock was not obtained within "
        f"{LOCK_TIMEOUT} (a long transaction reads it); the rest of the trim goes on and "
        "the next trim tries again",
        logging.WARNING,
    )


async def _remove(
    engine: AsyncEngine, lease: Lease | None, names: list[str], pause_factor: float
) -> list[float] | None:
    """Drop detached tables: each index, then the table, one fenced
    transaction each, pausing after each step (see the module's docstring).
    Returns each step's seconds, or None when the lease was lost."""
    steps_s = []
    for name in names:
        for statement in [*await _index_drops(engine, name), f"DROP TABLE {name}"]:
            started = time.monotonic()
            if not await _fenced(engine, lease, [statement]):
                return None
            steps_s.append(time.monotonic() - started)
            await asyncio.sleep(pause_after(steps_s[-1], pause_factor))
    return steps_s


def pause_after(step_s: float, pause_factor: float = PAUSE_FACTOR) -> float:
    """The seconds to wait after a step of removing files that took `step_s`."""
    return min(step_s * pause_factor, MAX_PAUSE_S)


async def _index_drops(engine: AsyncEngine, table: str) -> list[str]:
    """Statements that drop each index of a detached table (a primary key's
    with its constraint)."""
    async with engine.connect() as conn:
        quote = conn.dialect.identifier_preparer.quote
        found = (await conn.execute(text(INDEXES_SQL), {"table": table})).all()
    return [
        f"ALTER TABLE {table} DROP CONSTRAINT {quote(constraint)}"
        if constraint
        else f"DROP INDEX {quote(index)}"
        for index, constraint in found
    ]


def _detach_sql(name: str) -> list[str]:
    # Names come from the catalog and match schemas.table_partitions' pattern. The
    # new name marks it as expired, for a later trim to drop if this one
    # stops before dropping it.
    parent = "events" if name.startswith("events_") else "event_resources"
    return [
        f"ALTER TABLE {parent} DETACH PARTITION {name}",
        f"ALTER TABLE {name} RENAME TO {expired_name(name)}",
    ]


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
