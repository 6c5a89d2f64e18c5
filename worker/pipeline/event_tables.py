"""Whether `events` and `event_resources` are tables the worker can write,
checked once before it takes partitions (see `schemas.sharing` for who makes
them).

A table the worker cannot write (a column it writes missing, a column it does
not fill required, or the other kind of table than PERSISTER_EVENT_TABLES
says) stops `persister run` with one line and exit 3, before any record is
read: writing would turn every event into a dead letter while the stored
offsets move past them. Tables not there yet are waited for
(`worker.pipeline.database_wait`): Prefect's migrations may make them later.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.core.settings import Settings
from worker.pipeline.inserts import EVENT_COLUMNS, RESOURCE_COLUMNS

WRITTEN = {"events": EVENT_COLUMNS, "event_resources": RESOURCE_COLUMNS}

# Each column: whether a row must give it a value (NOT NULL, no default).
COLUMNS_SQL = """
SELECT a.attname, a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
  AND a.attgenerated = ''
FROM pg_attribute a
WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped
"""
KIND_SQL = "SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:name)"


class Unwritable(Exception):
    """The event tables are there but the worker cannot write them."""


def column_problem(table: str, columns: Mapping[str, bool], written: Collection[str]) -> str | None:
    """What stops the worker writing `table` with these columns (name ->
    needs a value), or None. Pure."""
    missing = [name for name in written if name not in columns]
    if missing:
        return f"{table} has no column {', '.join(missing)}"
    unfilled = sorted(name for name, needed in columns.items() if needed and name not in written)
    if unfilled:
        return f"{table}.{', '.join(unfilled)} needs a value the persister does not write"
    return None


def kind_problem(event_tables: str, partitioned: bool) -> str | None:
    """Whether `events` is the kind of table PERSISTER_EVENT_TABLES says. Pure."""
    if event_tables == "prefect" and partitioned:
        return (
            "events is the persister's own partitioned table, not Prefect's "
            "(PERSISTER_EVENT_TABLES=prefect)"
        )
    if event_tables == "persister" and not partitioned:
        return (
            "events is not the persister's own partitioned table; if it is a Prefect "
            "server's, set PERSISTER_EVENT_TABLES=prefect"
        )
    return None


async def _columns(conn: AsyncConnection, table: str) -> dict[str, bool]:
    rows = await conn.execute(text(COLUMNS_SQL), {"name": table})
    return {str(name): bool(needed) for name, needed in rows}


async def check(engine: AsyncEngine, settings: Settings) -> None:
    """Raise `Unwritable`, with one line, if the worker cannot write the
    event tables as they are (PostgreSQL; SQLite's are always its own)."""
    if engine.dialect.name != "postgresql":
        return
    async with engine.connect() as conn:
        kind = (await conn.execute(text(KIND_SQL), {"name": "events"})).scalar()
        problems = [kind_problem(settings.event_tables, kind == "p")]
        for table, written in WRITTEN.items():
            problems.append(column_problem(table, await _columns(conn, table), written))
    found = [p for p in problems if p is not None]
    if found:
        raise Unwritable(f"refused: {found[0]}; nothing was read or written")
