"""One partition batch -> one database transaction, and what a failure means:

- `FenceError` (raised): another worker owns the partition now;
- rows the database rejects as data errors (see `worker.core.errors`, also right
  after a failed write): the batch is written again with those rows isolated
  and dead-lettered;
- anything else (raised): the database is unwell, retry later.

One transaction per batch (`write_batch`):

1. advance the partition's row in `consumer_offsets`, fenced on the offset
   this worker last saw (see `worker.pipeline.offset_fence`);
2. insert events, skipping ids already stored, and the resource rows of the
   new ones (see `worker.pipeline.inserts`);
3. insert dead letters, skipping ones already stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.tables import dead_letters
from worker.core.errors import ErrorKind, classify, describe
from worker.core.settings import Settings
from worker.core.sql_dialect import dialect_insert
from worker.core.topic_partition import TP
from worker.pipeline.batching import Record
from worker.pipeline.decoding import Rejection, Rows, received_at, to_rows
from worker.pipeline.inserts import CopyFirst, Isolation, insert_rows
from worker.pipeline.offset_fence import advance_offset
from worker.pipeline.partition_state import fields

logger = logging.getLogger(__name__)


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


class BatchWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        # At most one transaction per pooled connection; others wait here
        # rather than in the pool, where they would time out.
        self._slots = asyncio.Semaphore(settings.database_pool_size)
        self._copy_first = CopyFirst()

    async def write(
        self, tp: TP, expected: int | None, batch: list[Record], next_offset: int | None = None
    ) -> Written:
        """Write `batch` (possibly empty) and advance the stored offset from
        `expected` to `next_offset` (default: past its last record)."""
        s = self.settings
        rows = to_rows(batch, s.limits, s.max_message_bytes)
        if next_offset is None:
            next_offset = batch[-1].offset + 1
        async with self._slots:
            written = await self._write_rows(tp, expected, next_offset, rows)
        self._copy_first.written(tp, written.events, len(rows.events))
        for offset, error_class in written.rejected:
            # Where from and why, never the value (it may hold anything).
            logger.warning(
                "%s[%d]@%d: dead-lettered (%s); see `persister dlq list`",
                *tp,
                offset,
                error_class,
                extra=fields(tp, offset=offset, error_class=error_class),
            )
        return written

    async def _write_rows(
        self, tp: TP, expected: int | None, next_offset: int, rows: Rows
    ) -> Written:
        group = self.settings.group_id
        copy = self._copy_first(tp)
        # One deadline per transaction, not only per statement. If it passes
        # while the commit was under way, the fence of the retry tells.
        timeout_s = self.settings.database_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await write_batch(
                    self.engine, group, tp, expected, next_offset, rows, copy=copy
                )
        except SQLAlchemyError as exc:
            if classify(exc) is not ErrorKind.DATA:
                raise
            code, message = describe(exc)
            logger.warning(
                "%s[%d]: database rejected a row (%s: %s); isolating", *tp, code, message
            )
        async with asyncio.timeout(timeout_s):
            return await write_batch(
                self.engine, group, tp, expected, next_offset, rows, isolate=True
            )


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
