"""Idempotent row inserts, one way per dialect.

PostgreSQL: one statement per table that takes each column as an array and
`unnest`s them (`INSERT ... SELECT * FROM unnest($1::uuid[], ...)`): one round
trip and one prepared statement whatever the batch size, and no limit on bind
parameters. JSON columns arrive as JSON text (see `worker.decoding`), so
nothing is serialised twice.

Other dialects (SQLite): SQLAlchemy's executemany, with the JSON columns bound
as text for the same reason.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, Text, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.tables import event_resources, events
from worker.decoding import JSON_COLUMNS

# Filled by the database.
SERVER_COLUMNS = frozenset({"recorded"})


def _columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name not in SERVER_COLUMNS]


def _unnest_insert(table: Table, returning: str | None) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    names = _columns(table)
    arrays = ", ".join(
        f"${i}::{table.c[name].type.compile(dialect=dialect)}[]"
        for i, name in enumerate(names, start=1)
    )
    sql = (
        f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608 - names from the schema
        f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
    )
    return f"{sql} RETURNING {returning}" if returning else sql


EVENTS_SQL = _unnest_insert(events, returning="id")
RESOURCES_SQL = _unnest_insert(event_resources, returning=None)
EVENT_COLUMNS = _columns(events)
RESOURCE_COLUMNS = _columns(event_resources)


def _as_arrays(rows: list[dict[str, Any]], names: list[str]) -> tuple[list[Any], ...]:
    return tuple([row[name] for row in rows] for name in names)


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[Any]:
    """Insert events, skipping ids already stored; returns the new ids."""
    if conn.dialect.name == "postgresql":
        result = await conn.exec_driver_sql(EVENTS_SQL, _as_arrays(rows, EVENT_COLUMNS))
    else:
        stmt = _generic_insert(events).returning(events.c.id)
        result = await conn.execute(stmt, rows)
    return list(result.scalars().all())


async def insert_resources(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(RESOURCES_SQL, _as_arrays(rows, RESOURCE_COLUMNS))
    else:
        await conn.execute(_generic_insert(event_resources), rows)


def _generic_insert(table: Table) -> Any:
    json_text = {
        name: bindparam(name, type_=Text) for name in _columns(table) if name in JSON_COLUMNS
    }
    return sqlite.insert(table).values(json_text).on_conflict_do_nothing()
