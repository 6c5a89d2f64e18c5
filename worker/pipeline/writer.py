"""One partition batch -> one database transaction (see `worker.pipeline.storage`), and
what a failure means:

- `FenceError` (raised): another worker owns the partition now;
- rows the database rejects as data errors (see `worker.core.errors`, also right
  after a failed write): the batch is written again with those rows isolated
  and dead-lettered;
- anything else (raised): the database is unwell, retry later.

A partition's batch goes in by COPY unless its last batch met events already
stored: duplicates come in runs (a replay, a producer re-sending what it
sent), and while they last an INSERT that skips them costs less than a COPY
refused first. The first batch without duplicates switches it back.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core.errors import ErrorKind, classify, describe
from worker.core.settings import Settings
from worker.core.topic_partition import TP
from worker.pipeline.batching import Record
from worker.pipeline.decoding import Rows, to_rows
from worker.pipeline.partitions import fields
from worker.pipeline.storage import Written, write_batch

logger = logging.getLogger(__name__)


class BatchWriter:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        # At most one transaction per pooled connection; others wait here
        # rather than in the pool, where they would time out.
        self._slots = asyncio.Semaphore(settings.database_pool_size)
        # Partitions whose last batch held events already stored.
        self._duplicates: set[TP] = set()

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
        if written.events < len(rows.events):
            self._duplicates.add(tp)
        else:
            self._duplicates.discard(tp)
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
        copy = tp not in self._duplicates
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
