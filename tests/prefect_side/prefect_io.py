"""Prefect's side of the read-back test, run with the Prefect venv's python.

    prefect_io.py build IN OUT   events (JSON list) -> ReceivedEvent: wire form and rows
    prefect_io.py read IN OUT    filters (JSON object) -> what Prefect reads from the tables

`read` takes the database from PREFECT_API_DATABASE_CONNECTION_URL. It only
reads: it never creates, migrates or writes a table. Values are written out in
one plain form (timestamps as UTC ISO strings, UUIDs as strings), so what
Prefect builds and what it reads compare with `==`. Imports nothing from the
worker: only the standard library and Prefect.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import prefect
import sqlalchemy as sa
from prefect.server.database import provide_database_interface
from prefect.server.events.counting import Countable, TimeUnit
from prefect.server.events.filters import EventFilter
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.events.storage.database import count_events, read_events


def plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def build(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Each event as a producer sends it (`model_dump_json()`), and the rows
    Prefect's server writes for what it receives."""
    wire = [ReceivedEvent.model_validate(e).model_dump_json() for e in events]
    received = [ReceivedEvent.model_validate_json(w) for w in wire]
    return {
        "prefect": prefect.__version__,
        "wire": wire,
        "events": [plain(e.model_dump()) for e in received],
        "rows": [plain(e.as_database_row()) for e in received],
        "resource_rows": [plain(r) for e in received for r in e.as_database_resource_rows()],
    }


def mapped(obj: Any) -> dict[str, Any]:
    """Every column Prefect's ORM model maps, as loaded."""
    return {a.key: plain(getattr(obj, a.key)) for a in sa.inspect(type(obj)).column_attrs}


async def read(filters: dict[str, Any]) -> dict[str, Any]:
    db = provide_database_interface()
    found: dict[str, Any] = {}
    async with db.session_context() as session:
        for name, spec in filters.items():
            event_filter = EventFilter.model_validate(spec)
            page = await read_events(session, event_filter)
            counts = await count_events(session, event_filter, Countable.event, TimeUnit.day, 1)
            found[name] = {
                "events": [
                    plain(ReceivedEvent.model_validate(e, from_attributes=True).model_dump())
                    for e in page
                ],
                "counts": {c.value: c.count for c in counts},
            }
        rows = (await session.scalars(sa.select(db.Event))).all()
        resource_rows = (await session.scalars(sa.select(db.EventResource))).all()
    await (await db.engine()).dispose()
    return {
        "prefect": prefect.__version__,
        "filters": found,
        "rows": [mapped(r) for r in rows],
        "resource_rows": [mapped(r) for r in resource_rows],
    }


def main() -> None:
    command, source, target = sys.argv[1:]
    given = json.loads(Path(source).read_text())
    if command == "build":
        result = build(given)
    elif command == "read":
        result = asyncio.run(read(given))
    else:
        sys.exit(f"unknown command {command!r}: build or read")
    Path(target).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
