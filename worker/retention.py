"""Trimming events older than the retention period.

A trim deletes, for each rule, resource rows first and then events, in
batches (`worker.storage.batch_delete`), each batch an index range scan on
`occurred`. Rules: one per retention override (events whose name matches a
glob, kept for less than the retention period), then the retention period for
everything. With a lease, every batch also checks that the lease is still
held with its epoch, so a trimmer that lost leadership mid-trim stops deleting
at its next batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from schemas.tables import event_resources, events
from worker.leader import Lease, holds
from worker.settings import Settings
from worker.storage import batch_delete

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Delete events older than `cutoff` (whose name matches `like`, if set)."""

    cutoff: datetime
    like: str | None = None


@dataclass(frozen=True)
class Trimmed:
    resources: int
    events: int


def glob_to_like(pattern: str) -> str:
    """`heartbeat.*` -> `heartbeat.%`, with LIKE's own wildcards escaped."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def rules(now: datetime, retention: timedelta, overrides: dict[str, timedelta]) -> list[Rule]:
    """The overrides first (they are shorter), then everything else."""
    shorter = [Rule(now - kept, glob_to_like(p)) for p, kept in sorted(overrides.items())]
    return [*shorter, Rule(now - retention)]


def conditions(rule: Rule) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(resource rows, events) a rule deletes."""
    old_events = events.c.occurred < rule.cutoff
    old_resources = event_resources.c.occurred < rule.cutoff
    if rule.like is None:
        return old_resources, old_events
    named = events.c.event.like(rule.like, escape="\\")
    of_named = event_resources.c.event_id.in_(select(events.c.id).where(old_events, named))
    return and_(old_resources, of_named), and_(old_events, named)


async def trim(
    engine: AsyncEngine,
    settings: Settings,
    lease: Lease | None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Trimmed:
    """Delete (or with `dry_run`, count) what the retention rules expire."""
    fence = holds(lease) if lease is not None else true()
    sessions = async_sessionmaker(engine)
    totals = [0, 0]
    when = now or datetime.now(UTC)
    for rule in rules(when, settings.retention, settings.retention_overrides):
        for i, (table, condition) in enumerate(
            zip((event_resources, events), conditions(rule), strict=True)
        ):
            async with sessions() as session:
                if dry_run:
                    totals[i] += await _count(session, table, condition)
                else:
                    where = and_(condition, fence)
                    totals[i] += await batch_delete(session, table, where, settings.trim_batch_size)
    return Trimmed(*totals)


async def _count(session: AsyncSession, table: Table, condition: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(table).where(condition)
    return int((await session.execute(query)).scalar_one())
