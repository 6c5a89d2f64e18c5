"""Waiting for the database before taking work: a replica that cannot write
must not hold partitions other replicas could write."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core.conditions import Conditions
from worker.core.retry import backoff_s
from worker.pipeline.partitions import RETRY_CAP_S

CHECK_TIMEOUT_S = 5.0
# 1 s, 2 s, ... up to 30 s between checks, jittered.
BASE_S = 0.5


# The worker's bookkeeping; and, beside Prefect, the events table Prefect's
# migrations make, maybe after the worker's.
OWN_TABLE = "persister_consumer_offsets"
HINTS = {
    "persister": "run `persister migrate`",
    "prefect": "run `persister migrate`, and start the Prefect server or run "
    "`prefect server database upgrade` to make its events tables",
}


async def ping(engine: AsyncEngine, tables: tuple[str, ...] = (OWN_TABLE,)) -> None:
    """Raise what the database raises if it cannot be used."""
    async with asyncio.timeout(CHECK_TIMEOUT_S), engine.connect() as conn:
        for table in tables:
            # Names are this module's constants.
            await conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1"))  # noqa: S608


async def wait_for_database(
    engine: AsyncEngine, stopping: asyncio.Event, event_tables: str = "persister"
) -> bool:
    """Until the database answers (True) or `stopping` is set (False). While
    it does not, one WARNING, `/readyz` 503 and persister_conditions{kind=
    "database"} 1; a line when it answers."""
    conditions = Conditions("database")
    tables = (OWN_TABLE, "events", "event_resources")
    failures = 0
    while not stopping.is_set():
        try:
            await ping(engine, tables)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            failures += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            conditions.raise_(
                "start",
                f"database not usable yet ({type(exc).__name__}: {first}); not joining the "
                f"consumer group until it answers (check the database URL, {HINTS[event_tables]})",
                logging.WARNING,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff_s(failures, BASE_S, RETRY_CAP_S))
            continue
        conditions.clear("start", "the database answers; joining the consumer group")
        return True
    return False
