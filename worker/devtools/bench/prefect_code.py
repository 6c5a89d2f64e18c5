"""Prefect's side of `make bench-prefect-read`, run with the Prefect venv's
python; the database is PREFECT_API_DATABASE_CONNECTION_URL's, migrated by
Prefect. Imports nothing from the worker: only the standard library and
Prefect.

    prefect_code.py fill < events.jsonl
        Fill the database the way Prefect's own event persister does: each
        JSON line read as Prefect's `ReceivedEvent` and written by Prefect's
        `write_events`, in transactions of BATCH events. Prints the count.

    prefect_code.py plans SINCE UNTIL
        The plans PostgreSQL chose for the queries behind Prefect's UI feed
        (`query_events`: the total, then the newest page) and its count by
        event name (`count_events`), over [SINCE, UNTIL]; one JSON object per
        line, as `auto_explain` reports them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from prefect.server.database import provide_database_interface
from prefect.server.events.counting import Countable, TimeUnit
from prefect.server.events.filters import EventFilter
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.events.storage.database import count_events, query_events, write_events

BATCH = 5_000
# auto_explain, for this session only: every statement's plan as a NOTICE.
EXPLAINING = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_format = 'json'",
    "SET auto_explain.log_level = 'notice'",
    "SET client_min_messages = 'notice'",
)


async def _flush(db: Any, batch: list[Any]) -> None:
    async with db.session_context(begin_transaction=True) as session:
        await write_events(session, batch)


async def fill() -> int:
    db = provide_database_interface()
    batch: list[Any] = []
    written = 0
    for line in sys.stdin.buffer:
        batch.append(ReceivedEvent.model_validate_json(line))
        if len(batch) == BATCH:
            await _flush(db, batch)
            written += len(batch)
            batch = []
    await _flush(db, batch)
    written += len(batch)
    await (await db.engine()).dispose()
    return written


def _plan(message: str) -> dict[str, Any]:
    # "duration: 0.104 ms  plan:\n{...}"
    return dict(json.loads(message.split("plan:", 1)[1]))


async def plans(since: datetime, until: datetime) -> list[dict[str, Any]]:
    db = provide_database_interface()
    found: list[dict[str, Any]] = []
    async with db.session_context() as session:
        raw = await (await session.connection()).get_raw_connection()
        driver = raw.driver_connection
        driver.add_log_listener(lambda _conn, message: found.append(_plan(message.message)))
        for statement in EXPLAINING:
            await driver.execute(statement)
        feed = EventFilter.model_validate(
            {"occurred": {"since": since, "until": until}, "order": "DESC"}
        )
        await query_events(session, feed, page_size=50)
        await count_events(session, feed, Countable.event, TimeUnit.day, 1)
    await (await db.engine()).dispose()
    return found


def main(argv: list[str]) -> None:
    if argv[0] == "fill":
        print(asyncio.run(fill()))
    else:
        since, until = datetime.fromisoformat(argv[1]), datetime.fromisoformat(argv[2])
        for plan in asyncio.run(plans(since, until)):
            print(json.dumps(plan))


if __name__ == "__main__":
    main(sys.argv[1:])
