"""Trimming events older than the retention period.

On the worker's own tables on PostgreSQL a trim first creates the partitions
ahead and drops the partitions wholly older than the retention period
(`worker.services.table_partitions`, fenced by the lease). Then it deletes, for
each rule, resource rows first and then events, in batches
(`worker.services.batch_delete`), each batch an index range scan on
`occurred`: in each partition that still holds rows older than the rule's
cutoff (the one straddling it, the DEFAULT one, and for overrides the younger
ones), or in the whole tables on SQLite and in Prefect's tables, which are not
partitioned. Rules: one per retention override (events whose name matches a
glob, kept for less than the retention period), then the retention period for
everything. With a lease, every batch also checks that the lease is still
held with its epoch, so a trimmer that lost leadership mid-trim stops
deleting at its next batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from schemas.tables import event_resources, events
from worker.core.leader import Lease, holds
from worker.core.settings import Settings
from worker.services import table_partitions
from worker.services.batch_delete import batch_delete

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Delete events older than `cutoff` (whose name matches `like`, if set)."""

    cutoff: datetime
    like: str | None = None


@dataclass(frozen=True)
class Trimmed:
    """Rows deleted one by one, and partitions (of both tables) dropped whole."""

    resources: int
    events: int
    partitions: int = 0


def glob_to_like(pattern: str) -> str:
    """`heartbeat.*` -> `heartbeat.%`, with LIKE's own wildcards escaped."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def rules(now: datetime, retention: timedelta, overrides: dict[str, timedelta]) -> list[Rule]:
    """The overrides first (they are shorter), then everything else."""
    shorter = [Rule(now - kept, glob_to_like(p)) for p, kept in sorted(overrides.items())]
    return [*shorter, Rule(now - retention)]


def condition(rule: Rule, base: Table, target: Table) -> ColumnElement[bool]:
    """The rows of `target` (`base` itself, or one of its partitions) that
    `rule` deletes."""
    old = target.c.occurred < rule.cutoff
    if rule.like is None:
        return old
    if base is events:
        return and_(old, target.c.event.like(rule.like, escape="\\"))
    named = select(events.c.id).where(
        events.c.occurred < rule.cutoff, events.c.event.like(rule.like, escape="\\")
    )
    return and_(old, target.c.event_id.in_(named))


def conditions(rule: Rule) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(resource rows, events) a rule deletes, on the whole tables."""
    return condition(rule, event_resources, event_resources), condition(rule, events, events)


async def trim(
    engine: AsyncEngine,
    settings: Settings,
    lease: Lease | None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Trimmed:
    """Delete (or with `dry_run`, count) what the retention rules expire. On
    PostgreSQL, first create the partitions ahead and drop the expired ones
    whole; then delete the rest row by row from the partitions it is in."""
    when = now or datetime.now(UTC)
    partitioned = engine.dialect.name == "postgresql" and settings.event_tables == "persister"
    dropped = 0
    if partitioned and not dry_run:
        await table_partitions.ensure_for(engine, settings, when)
        cutoff = when - settings.retention
        dropped = len(await table_partitions.drop_expired(engine, cutoff, lease))
    totals = [0, 0]
    for rule in rules(when, settings.retention, settings.retention_overrides):
        for i, table in enumerate((event_resources, events)):
            if dry_run:
                totals[i] += await _count(engine, table, condition(rule, table, table))
                continue
            targets = [table]
            if partitioned:
                targets = await table_partitions.straddling(engine, table, rule.cutoff)
            for target in targets:
                totals[i] += await _delete(engine, settings, lease, rule, table, target)
    return Trimmed(totals[0], totals[1], dropped)


async def _delete(
    engine: AsyncEngine,
    settings: Settings,
    lease: Lease | None,
    rule: Rule,
    table: Table,
    target: Table,
) -> int:
    fence = holds(lease) if lease is not None else true()
    where = and_(condition(rule, table, target), fence)
    async with async_sessionmaker(engine)() as session:
        return await batch_delete(
            session, target, where, settings.trim_batch_size, order_by=target.c.occurred
        )


async def _count(engine: AsyncEngine, table: Table, condition: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(table).where(condition)
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())
