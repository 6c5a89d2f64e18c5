"""The previous storage, kept as the benchmark's reference: the unpartitioned
tables of schema revision 0005 (keys and indexes as revision 0004 left them),
in a schema of their own, on a server with PostgreSQL's default settings.

The columns are the current ones, so the same COPY rows fit both.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Table
from sqlalchemy.ext.asyncio import AsyncSession

from worker.devtools.bench import db
from worker.services.batch_delete import batch_delete_statement

SCHEMA = "bench_previous"
# Rows per delete batch: the trimmer's default, then and now.
BATCH_ROWS = 10_000
TABLES = (f"{SCHEMA}.events", f"{SCHEMA}.event_resources")

_TS = "timestamp with time zone"
DDL = (
    f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
    f"CREATE SCHEMA {SCHEMA}",
    f"CREATE TABLE {SCHEMA}.events (id uuid NOT NULL, occurred {_TS} NOT NULL,"
    " event varchar(1024) NOT NULL, resource_id text NOT NULL, resource jsonb NOT NULL,"
    " related_resource_ids jsonb NOT NULL, related jsonb NOT NULL, payload jsonb NOT NULL,"
    f" received {_TS} NOT NULL, recorded {_TS} DEFAULT now() NOT NULL, follows uuid,"
    f" created {_TS} DEFAULT now() NOT NULL, updated {_TS} DEFAULT now() NOT NULL,"
    " CONSTRAINT pk_events PRIMARY KEY (id))",
    f"CREATE TABLE {SCHEMA}.event_resources (event_id uuid NOT NULL,"
    " resource_role text NOT NULL, resource_id text NOT NULL,"
    f" occurred {_TS} NOT NULL, resource jsonb NOT NULL,"
    " id uuid DEFAULT gen_random_uuid() NOT NULL,"
    f" created {_TS} DEFAULT now() NOT NULL, updated {_TS} DEFAULT now() NOT NULL,"
    " CONSTRAINT pk_event_resources PRIMARY KEY (event_id, resource_role, resource_id))",
)
INDEXES = (
    f"CREATE INDEX ix_events__occurred ON {SCHEMA}.events (occurred)",
    f"CREATE INDEX ix_events__event_occurred ON {SCHEMA}.events (event, occurred)",
    f"CREATE INDEX ix_events__resource_id_occurred ON {SCHEMA}.events (resource_id, occurred)",
    f"CREATE INDEX ix_event_resources__resource_id_occurred"
    f" ON {SCHEMA}.event_resources (resource_id, occurred)",
    f"CREATE INDEX ix_event_resources__occurred ON {SCHEMA}.event_resources (occurred)",
)


async def create(conn: db.Connection, *, indexes: bool = True) -> None:
    """The previous tables, empty (dropped first if a run left them); their
    secondary indexes unless `indexes` is False (see `create_indexes`)."""
    for statement in DDL + (INDEXES if indexes else ()):
        await conn.execute(statement)


async def create_indexes(conn: db.Connection) -> None:
    for statement in INDEXES:
        await conn.execute(statement)


async def truncate(conn: db.Connection) -> None:
    await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    await conn.execute("CHECKPOINT")


async def delete_from_oldest(
    session: AsyncSession, table: Table, condition: ColumnElement[bool]
) -> int:
    """`batch_delete`'s batches as they were before each started where the
    last ended: every one an index range scan from the oldest row."""
    stmt = batch_delete_statement("postgresql", table, condition, BATCH_ROWS, table.c.occurred)
    total = 0
    while True:
        deleted = int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]
        await session.commit()
        total += deleted
        if deleted < BATCH_ROWS:
            return total
