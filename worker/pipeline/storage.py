"""Writes batches and offsets to the database. One transaction per batch:

1. advance the partition's row in `consumer_offsets`, fenced on the offset
   this worker last saw (a stale owner gets `FenceError` and writes nothing);
2. insert events, skipping ids already stored;
3. insert resource rows for the events that were new;
4. insert dead letters, skipping ones already stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Delete,
    Table,
    and_,
    delete,
    func,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from schemas.tables import consumer_offsets, dead_letters
from worker.core.errors import ErrorKind, classify, describe
from worker.core.topic_partition import TP
from worker.pipeline.decoding import Rejection, Row, Rows, event_key, received_at
from worker.pipeline.inserts import copy_events_and_resources, insert_events_and_resources

logger = logging.getLogger(__name__)


class FenceError(Exception):
    """The stored offset is not the one this worker last saw. Above it (or
    set where this worker found none): another worker owns the partition now,
    or did in between. Below it, or gone: the database lost writes this
    worker committed (a failover to a replica that had not received them, a
    restore from a backup), or a forced replay moved it back; either way the
    worker reloads it and writes the lost tail again."""

    def __init__(self, tp: TP, expected: int | None, stored: int | None) -> None:
        self.tp, self.expected, self.stored = tp, expected, stored
        where = f"{tp[0]}[{tp[1]}]"
        if self.lost_writes:
            now = "gone" if stored is None else f"{stored}"
            text = (
                f"{where}: stored offset is {now}, below the {expected} this worker wrote; "
                "the database lost writes (a failover or restore?), or a replay moved it back"
            )
        elif expected is None:
            text = (
                f"{where}: stored offset is {stored}, where there was none; another worker owns it"
            )
        else:
            text = (
                f"{where}: stored offset is no longer {expected} but {stored}; "
                "another worker owns it (or this worker's last commit went through "
                "and its answer was lost)"
            )
        super().__init__(text)

    @property
    def lost_writes(self) -> bool:
        """The database went back in time (see the class)."""
        return self.expected is not None and (self.stored is None or self.stored < self.expected)


@dataclass(frozen=True)
class Written:
    events: int
    resources: int
    dead_letters: int
    # Savepoints tried to isolate rows the database rejected (0 normally).
    isolation_attempts: int = 0
    # The offset and error class of each message of the batch that was
    # dead-lettered.
    rejected: tuple[tuple[int, str], ...] = ()
    # The events went in by INSERT ... ON CONFLICT, not by COPY.
    inserted: bool = False
    # When the transaction committed (time.time()): the end of each event's
    # end-to-end latency.
    committed_at: float | None = None


def dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def load_offsets(
    conn: AsyncConnection, group_id: str, partitions: Iterable[TP]
) -> dict[TP, int]:
    wanted = list(partitions)
    if not wanted:
        return {}
    c = consumer_offsets.c
    rows = await conn.execute(
        select(c.topic, c.partition, c.next_offset).where(
            c.group_id == group_id, tuple_(c.topic, c.partition).in_(wanted)
        )
    )
    return {(topic, partition): offset for topic, partition, offset in rows}


async def advance_offset(
    conn: AsyncConnection,
    group_id: str,
    tp: TP,
    expected: int | None,
    next_offset: int,
) -> None:
    """Move the stored offset from `expected` to `next_offset`, or raise FenceError.

    The row lock taken here serialises two writers of one partition; the
    second re-checks the condition after the first commits and fails it.
    """
    c = consumer_offsets.c
    key = and_(c.group_id == group_id, c.topic == tp[0], c.partition == tp[1])
    if expected is None:
        stmt = (
            dialect_insert(conn, consumer_offsets)
            .values(group_id=group_id, topic=tp[0], partition=tp[1], next_offset=next_offset)
            .on_conflict_do_nothing()
        )
    else:
        stmt = (
            update(consumer_offsets)
            .where(key, c.next_offset == expected)
            .values(next_offset=next_offset, updated=func.now())
        )
    result = await conn.execute(stmt)
    if result.rowcount != 1:
        # Which way it moved tells what happened (see FenceError).
        stored = (await conn.execute(select(c.next_offset).where(key))).scalar_one_or_none()
        raise FenceError(tp, expected, stored)


async def insert_rows(
    conn: AsyncConnection, event_rows: list[Row], rows: Rows, copy: bool = False
) -> tuple[int, int, bool]:
    """Insert events idempotently, and resource rows for the new ones only;
    with `copy` (PostgreSQL), try COPY first (see `worker.pipeline.inserts`).
    Returns (new events, resource rows, whether the INSERT wrote them)."""
    resources = [r for row in event_rows for r in rows.resources[event_key(row)]]
    if copy and conn.dialect.name == "postgresql":
        copied = await copy_events_and_resources(conn, event_rows, resources)
        if copied is not None:
            return *copied, False
    return *await insert_events_and_resources(conn, event_rows, resources), bool(event_rows)


@dataclass
class Isolation:
    """Finds the events the database rejects by halving: each attempt runs in
    a savepoint, a half that fails is split again, and when the left half of a
    failed range succeeds the right half is split without trying it whole."""

    conn: AsyncConnection
    rows: Rows
    attempts: int = 0
    events: int = 0
    resources: int = 0

    async def run(self, part: list[Row], known_bad: bool = False) -> list[Rejection]:
        if not part:
            return []
        if not known_bad or len(part) == 1:
            self.attempts += 1
            try:
                async with self.conn.begin_nested():
                    n_events, n_resources, _ = await insert_rows(self.conn, part, self.rows)
            except StatementError as exc:
                if classify(exc) is not ErrorKind.DATA:
                    raise
                if len(part) == 1:
                    source = self.rows.sources[event_key(part[0])]
                    return [Rejection(source, *describe(exc))]
            else:
                self.events += n_events
                self.resources += n_resources
                return []
        middle = len(part) // 2
        rejected = await self.run(part[:middle])
        return rejected + await self.run(part[middle:], known_bad=not rejected)


async def insert_dead_letters(
    conn: AsyncConnection, group_id: str, rejections: Sequence[Rejection]
) -> int:
    if not rejections:
        return 0
    values = [
        {
            "group_id": group_id,
            "topic": r.record.topic,
            "partition": r.record.partition,
            "offset": r.record.offset,
            "timestamp": received_at(r.record) if r.record.timestamp is not None else None,
            "key": r.record.key,
            "value": r.record.value,
            "error_class": r.error_class,
            "error": r.error,
        }
        for r in rejections
    ]
    stmt = dialect_insert(conn, dead_letters).on_conflict_do_nothing().returning(dead_letters.c.id)
    return len((await conn.execute(stmt, values)).scalars().all())


def batch_delete_statement(
    dialect: str,
    model: Table,
    condition: ColumnElement[bool],
    batch_size: int,
    order_by: ColumnElement[Any] | None = None,
) -> Delete:
    """One batch of `batch_delete`: rows chosen through a LIMIT subquery by
    physical row id (PostgreSQL's ctid, SQLite's rowid), so the delete itself
    is a TID scan rather than a join over the table; with `order_by` (an
    indexed column such as `occurred`) the subquery is an index range scan
    from the oldest row. A ctid is only unique within one table, so on a
    partitioned table the row id is (tableoid, ctid); the trimmer deletes
    from one partition at a time instead."""
    ids: list[ColumnElement[Any]] = [literal_column("ctid" if dialect == "postgresql" else "rowid")]
    if dialect == "postgresql" and model.dialect_options["postgresql"].get("partition_by"):
        ids.insert(0, literal_column("tableoid"))
    chosen = select(*ids).select_from(model).where(condition).limit(batch_size)
    if order_by is not None:
        chosen = chosen.order_by(order_by)
    row_id = ids[0] if len(ids) == 1 else tuple_(*ids)
    return delete(model).where(row_id.in_(chosen))


async def batch_delete(
    session: AsyncSession,
    model: Table,
    condition: ColumnElement[bool],
    batch_size: int = 10_000,
    order_by: Column[Any] | None = None,
) -> int:
    """Delete the rows of `model` matching `condition`, at most `batch_size` at
    a time, one transaction each, until none is left; returns how many. No
    statement holds locks on, or runs as long as, the whole range would.

    With `order_by` (an indexed NOT NULL column of `model`, such as
    `occurred`) on PostgreSQL, each batch after the first starts at the last
    value the previous one deleted (ties included) instead of at the oldest
    row: the index entries of deleted rows stay until vacuum, and a range
    scan from the oldest row would walk over all of them again in every
    batch. A row that arrives meanwhile below that value is left to the next
    call (rows are never updated in place, so none moves below it). SQLite
    removes index entries as it deletes, so it needs no bound."""
    dialect = session.get_bind().dialect.name
    stmt = batch_delete_statement(dialect, model, condition, batch_size, order_by)
    total = 0
    while True:
        if order_by is not None and dialect == "postgresql":
            deleted, reached = await _delete_reaching(session, stmt, order_by)
            if reached is not None:
                after = and_(condition, order_by >= reached)
                stmt = batch_delete_statement(dialect, model, after, batch_size, order_by)
        else:
            deleted = int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]
        await session.commit()
        total += deleted
        logger.debug("deleted %d rows from %s", deleted, model.name)
        if deleted < batch_size:
            return total


async def _delete_reaching(
    session: AsyncSession, stmt: Delete, order_by: Column[Any]
) -> tuple[int, Any]:
    """Run one batch; returns how many rows it deleted and the largest
    `order_by` among them, computed by the server (a data-modifying WITH)."""
    gone = stmt.returning(order_by.label("reached")).cte("gone")
    row = (await session.execute(select(func.count(), func.max(gone.c.reached)))).one()
    return int(row[0]), row[1]


async def write_batch(
    engine: AsyncEngine,
    group_id: str,
    tp: TP,
    expected: int | None,
    next_offset: int,
    rows: Rows,
    isolate: bool = False,
    copy: bool = False,
) -> Written:
    """One transaction: fenced offset, events, resources, dead letters.

    `copy`: try COPY first (see `insert_rows`). With `isolate` (after a
    plain attempt failed with a data error), events the database rejects are
    found by halving and become dead letters; without it such an error is
    raised.
    """
    async with engine.begin() as conn:
        await advance_offset(conn, group_id, tp, expected, next_offset)
        inserted = isolate and bool(rows.events)
        if isolate:
            isolation = Isolation(conn, rows)
            rejected = await isolation.run(rows.events, known_bad=True)
            n_events, n_resources = isolation.events, isolation.resources
        else:
            rejected = []
            n_events, n_resources, inserted = await insert_rows(conn, rows.events, rows, copy)
        letters = [*rows.rejections, *rejected]
        n_dead = await insert_dead_letters(conn, group_id, letters)
    attempts = isolation.attempts if isolate else 0
    classes = tuple((r.record.offset, r.error_class) for r in letters)
    committed_at = time.time()
    return Written(n_events, n_resources, n_dead, attempts, classes, inserted, committed_at)
