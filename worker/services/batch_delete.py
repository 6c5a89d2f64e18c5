"""Deleting a large range of rows in bounded batches, one transaction each
(the retention trimmer's row deletes)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Delete,
    Table,
    and_,
    delete,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

logger = logging.getLogger(__name__)


def batch_delete_statement(
    dialect: str,
    model: Table,
    condition: ColumnElement[bool],
    batch_size: int,
    order_by: ColumnElement[Any] | None = None,
) -> Delete:
    """One batch of `batch_delete`: rows chosen through a LIMIT subquery by
    physical row id (PostgreSQL's ctid, SQLite's rowid), so the delete itself
    is a TID scan rather than a join over the table; with `order_by` (an
    indexed column such as `occurred`) the subquery is an index range scan
    from the oldest row. A ctid is only unique within one table, so on a
    partitioned table the row id is (tableoid, ctid); the trimmer deletes
    from one partition at a time instead."""
    ids: list[ColumnElement[Any]] = [literal_column("ctid" if dialect == "postgresql" else "rowid")]
    if dialect == "postgresql" and model.dialect_options["postgresql"].get("partition_by"):
        ids.insert(0, literal_column("tableoid"))
    chosen = select(*ids).select_from(model).where(condition).limit(batch_size)
    if order_by is not None:
        chosen = chosen.order_by(order_by)
    row_id = ids[0] if len(ids) == 1 else tuple_(*ids)
    return delete(model).where(row_id.in_(chosen))


async def batch_delete(
    session: AsyncSession,
    model: Table,
    condition: ColumnElement[bool],
    batch_size: int = 10_000,
    order_by: Column[Any] | None = None,
) -> int:
    """Delete the rows of `model` matching `condition`, at most `batch_size` at
    a time, one transaction each, until none is left; returns how many. No
    statement holds locks on, or runs as long as, the whole range would.

    With `order_by` (an indexed NOT NULL column of `model`, such as
    `occurred`) on PostgreSQL, each batch after the first starts at the last
    value the previous one deleted (ties included) instead of at the oldest
    row: the index entries of deleted rows stay until vacuum, and a range
    scan from the oldest row would walk over all of them again in every
    batch. A row that arrives meanwhile below that value is left to the next
    call (rows are never updated in place, so none moves below it). SQLite
    removes index entries as it deletes, so it needs no bound."""
    dialect = session.get_bind().dialect.name
    stmt = batch_delete_statement(dialect, model, condition, batch_size, order_by)
    total = 0
    while True:
        if order_by is not None and dialect == "postgresql":
            deleted, reached = await _delete_reaching(session, stmt, order_by)
            if reached is not None:
                after = and_(condition, order_by >= reached)
                stmt = batch_delete_statement(dialect, model, after, batch_size, order_by)
        else:
            deleted = int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]
        await session.commit()
        total += deleted
        logger.debug("deleted %d rows from %s", deleted, model.name)
        if deleted < batch_size:
            return total


async def _delete_reaching(
    session: AsyncSession, stmt: Delete, order_by: Column[Any]
) -> tuple[int, Any]:
    """Run one batch; returns how many rows it deleted and the largest
    `order_by` among them, computed by the server (a data-modifying WITH)."""
    gone = stmt.returning(order_by.label("reached")).cte("gone")
    row = (await session.execute(select(func.count(), func.max(gone.c.reached)))).one()
    return int(row[0]), row[1]
