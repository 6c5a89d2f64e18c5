"""Idempotent row inserts, one way per dialect.

PostgreSQL, first choice: binary COPY into both tables, in a savepoint. It
costs the database about a third less CPU than the INSERT and needs no
conflict check; but COPY cannot skip a row already stored. So when COPY meets
an event already stored (a producer's retry, a replay) or any other error,
the savepoint is rolled back and the batch goes through the INSERT below,
which skips stored events and reports a row the database refuses the way
every other statement does. `CopyFirst` decides which to try first: a
partition's batch goes in by COPY unless its last batch met events already
stored. Duplicates come in runs (a replay, a producer re-sending what it
sent), and while they last an INSERT that skips them costs less than a COPY
refused first. The first batch without duplicates switches it back.

PostgreSQL, INSERT: ONE statement for both tables. Each column arrives as an array
and is `unnest`ed (`INSERT ... SELECT * FROM unnest($1::uuid[], ...)`); the
events insert returns the keys (id, occurred) that were new, and a second
data-modifying CTE inserts the resource rows of those events only. An event
is stored once per (id, occurred): see docs/storage.md, "Idempotency". One
round trip and one prepared statement whatever the batch size, and no limit
on bind parameters. JSON columns arrive as JSON text (see
`worker.pipeline.decoding`), so nothing is serialised twice.

Other dialects (SQLite): SQLAlchemy's executemany, with the JSON columns bound
as text for the same reason.

A batch the database rejects a row of is written again by `Isolation`, which
finds the rejected events by halving, each try in a savepoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import Table, Text, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.tables import event_resources, events
from worker.core.errors import ErrorKind, classify, describe
from worker.core.topic_partition import TP
from worker.pipeline.decoding import (
    EVENT_FIELDS,
    JSON_COLUMNS,
    RESOURCE_FIELDS,
    Rejection,
    Row,
    Rows,
    event_key,
)


def _columns(table: Table) -> list[str]:
    """The columns a row carries: those without a server default (`created`,
    `updated`, resource row ids), which the database fills, and `recorded`,
    which Prefect's `events` has no default for."""
    return [c.name for c in table.columns if c.server_default is None or c.name == "recorded"]


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


def _both_tables_insert() -> str:
    """Events, then the resource rows of the events that were new; returns
    (new events, resource rows written)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    names = _columns(event_resources)
    first = len(_columns(events)) + 1
    arrays = ", ".join(
        f"${i}::{event_resources.c[name].type.compile(dialect=dialect)}[]"
        for i, name in enumerate(names, start=first)
    )
    # Table and column names come from the schema, values are parameters.
    return (
        f"WITH new AS ({_unnest_insert(events, returning='id, occurred')}), "  # noqa: S608
        f"res AS (INSERT INTO event_resources ({', '.join(names)}) "
        f"SELECT * FROM unnest({arrays}) AS r({', '.join(names)}) "
        "WHERE (r.event_id, r.occurred) IN (SELECT id, occurred FROM new) "
        "ON CONFLICT DO NOTHING RETURNING 1) "
        "SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM res)"
    )


EVENTS_AND_RESOURCES_SQL = _both_tables_insert()
# A row's values (see `worker.pipeline.decoding.Row`), then `recorded`.
EVENT_COLUMNS = [*EVENT_FIELDS, "recorded"]
RESOURCE_COLUMNS = list(RESOURCE_FIELDS)


def stamped(event_rows: list[Row]) -> Iterator[Row]:
    """Each row with `recorded`, which Prefect's `events` has no default for:
    the worker fills it as Prefect's own persister does, once per batch."""
    recorded = (datetime.now(UTC),)
    return (row + recorded for row in event_rows)


async def copy_events_and_resources(
    conn: AsyncConnection, event_rows: list[Row], resources: list[Row]
) -> tuple[int, int] | None:
    """COPY events and their resource rows (PostgreSQL); None, with nothing
    written, when the database refused them: some event is already stored,
    or a row is bad. `insert_events_and_resources` then sorts them out."""
    if not event_rows:
        return 0, 0
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    savepoint = await conn.begin_nested()
    try:
        await driver.copy_records_to_table(
            "events", records=stamped(event_rows), columns=EVENT_COLUMNS
        )
        await driver.copy_records_to_table(
            "event_resources", records=resources, columns=RESOURCE_COLUMNS
        )
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        # The connection broke mid-COPY (asyncpg's connection errors are
        # PostgresErrors too, hence first): never hand it back to the pool.
        await conn.invalidate()
        raise OperationalError("COPY events", None, exc) from exc
    except asyncpg.PostgresError:
        # The server answered: the transaction stands, the savepoint goes.
        await savepoint.rollback()
        return None
    await savepoint.commit()
    return len(event_rows), len(resources)


async def insert_events_and_resources(
    conn: AsyncConnection, event_rows: list[Row], resources: list[Row]
) -> tuple[int, int]:
    """Insert events, skipping ids already stored, and the resource rows of
    the new ones only; returns (new events, resource rows written)."""
    if not event_rows:
        return 0, 0
    with_recorded = list(stamped(event_rows))
    if conn.dialect.name == "postgresql":
        # Column arrays, in the order of the statement's columns.
        arrays = (
            *_arrays(with_recorded, EVENT_COLUMNS, events),
            *_arrays(resources, RESOURCE_COLUMNS, event_resources),
        )
        result = await conn.exec_driver_sql(EVENTS_AND_RESOURCES_SQL, arrays)
        n_events, n_resources = tuple(result.one())
        return int(n_events), int(n_resources)
    returning = _generic_insert(events).returning(events.c.id, events.c.occurred)
    by_name = [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in with_recorded]
    new = {(i, _utc(o)) for i, o in (await conn.execute(returning, by_name)).all()}
    fresh = [r for r in resources if (r[0], _utc(r[3])) in new]
    if fresh:
        by_name = [dict(zip(RESOURCE_COLUMNS, row, strict=True)) for row in fresh]
        await conn.execute(_generic_insert(event_resources), by_name)
    return len(new), len(fresh)


def _arrays(rows: list[Row], columns: list[str], table: Table) -> list[list[Any]]:
    """The values of `rows` (in `columns` order) as one list per column of `table`."""
    by_column = dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True))
    return [by_column[name] for name in _columns(table)]


def _utc(moment: datetime) -> datetime:
    # SQLite returns timestamps without their zone; they are stored in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _generic_insert(table: Table) -> Any:
    json_text = {
        name: bindparam(name, type_=Text) for name in _columns(table) if name in JSON_COLUMNS
    }
    return sqlite.insert(table).values(json_text).on_conflict_do_nothing()


class CopyFirst:
    """Whether a partition's next batch tries COPY first (see the module's
    docstring): not while its last batch held events already stored."""

    def __init__(self) -> None:
        self._duplicates: set[TP] = set()

    def __call__(self, tp: TP) -> bool:
        return tp not in self._duplicates

    def written(self, tp: TP, new_events: int, events: int) -> None:
        """`tp`'s batch of `events` events stored `new_events` of them."""
        if new_events < events:
            self._duplicates.add(tp)
        else:
            self._duplicates.discard(tp)


async def insert_rows(
    conn: AsyncConnection, event_rows: list[Row], rows: Rows, copy: bool = False
) -> tuple[int, int, bool]:
    """Insert events idempotently, and resource rows for the new ones only;
    with `copy` (PostgreSQL), try COPY first (see the module's docstring).
    Returns (new events, resource rows, whether the INSERT wrote them)."""
    resources = rows.resources_of(event_rows)
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
