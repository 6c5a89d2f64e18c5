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


async def ping(engine: AsyncEngine) -> None:
    """Raise what the database raises if it cannot be used."""
    async with asyncio.timeout(CHECK_TIMEOUT_S), engine.connect() as conn:
        await conn.execute(text("SELECT 1 FROM consumer_offsets LIMIT 1"))


async def wait_for_database(engine: AsyncEngine, stopping: asyncio.Event) -> bool:
    """Until the database answers (True) or `stopping` is set (False). While
    it does not, one WARNING, `/readyz` 503 and persister_conditions{kind=
    "database"} 1; a line when it answers."""
    conditions = Conditions("database")
    failures = 0
    while not stopping.is_set():
        try:
            await ping(engine)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            failures += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            conditions.raise_(
                "start",
                f"database not usable yet ({type(exc).__name__}: {first}); not joining the "
                "consumer group until it answers (check DATABASE_URL, run `persister migrate`)",
                logging.WARNING,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff_s(failures, BASE_S, RETRY_CAP_S))
            continue
        conditions.clear("start", "the database answers; joining the consumer group")
        return True
    return False
