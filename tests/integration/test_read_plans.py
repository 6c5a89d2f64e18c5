"""Every read pattern of Prefect's `read_events` is an index scan on a
million events: the queries have the shape Prefect's filters build (see its
`prefect.server.events.filters`), newest first with a limit.

The events fill three whole daily partitions and the reads cover exactly
those, so the plans do not depend on the time of day the test runs: a window
that clipped a few minutes of a partition would rightly be read by a
sequential scan of those few rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import event_resources, events
from worker.devtools.stack import SERVER_SETTINGS

EVENTS = 1_000_000
DAYS = 3
# The three days before today's midnight UTC, inside the default retention,
# so partitions exist for them; UNTIL stops before today's partition.
END = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SINCE = END - timedelta(days=DAYS)
UNTIL = END - timedelta(microseconds=1)

# A million events over those three days: 1,000 names, 20,000 flow runs,
# 500 flows as related resources.
MILLION = """
INSERT INTO events (id, occurred, event, resource_id, resource, related_resource_ids,
                    related, payload, received)
SELECT gen_random_uuid(),
       CAST(:end AS timestamptz) - make_interval(secs => i * CAST(:step AS float8)),
       'prefect.flow-run.s' || (i % 1000), 'prefect.flow-run.' || (i % 20000),
       '{}', '[]', '[]', '{}', now()
FROM generate_series(1, :n) AS i
"""
RESOURCES = """
INSERT INTO event_resources (event_id, resource_role, resource_id, occurred, resource)
SELECT id, '', resource_id, occurred, '{}'::jsonb FROM events
UNION ALL
SELECT id, 'flow', 'prefect.flow.' || (abs(hashtext(id::text)) % 500), occurred, '{}'::jsonb
FROM events
"""


async def load_million(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(MILLION), {"n": EVENTS, "end": END, "step": DAYS * 86400 / EVENTS})
        await conn.execute(text(RESOURCES))
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE events"))
        await conn.execute(text("ANALYZE event_resources"))


def newest(*where: object) -> Select[tuple[object, ...]]:
    """Prefect's read_events: a time range, filters, newest first, a page."""
    return (
        select(events)
        .where(events.c.occurred >= SINCE, events.c.occurred <= UNTIL, *where)  # type: ignore[arg-type]
        .order_by(events.c.occurred.desc())
        .limit(50)
    )


def related(*where: object) -> object:
    """Prefect's related and any-resource filters: ids of events with such
    resource rows, in the same time range."""
    rows = event_resources.c
    return events.c.id.in_(
        select(rows.event_id).where(rows.occurred >= SINCE, rows.occurred <= UNTIL, *where)  # type: ignore[arg-type]
    )


R = event_resources.c
PATTERNS = {
    "time range": newest(),
    "event name": newest(events.c.event.in_(["prefect.flow-run.s7"])),
    "event prefix": newest(events.c.event.startswith("prefect.flow-run.s99")),
    "resource id": newest(events.c.resource_id.in_(["prefect.flow-run.17"])),
    "resource id prefix": newest(events.c.resource_id.startswith("prefect.flow-run.1999")),
    "related id and role": newest(
        related(R.resource_id.in_(["prefect.flow.3"]), R.resource_role.in_(["flow"]))
    ),
}


async def plan(engine: AsyncEngine, query: Select[tuple[object, ...]]) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    async with engine.connect() as conn:
        return "\n".join((await conn.execute(text(f"EXPLAIN {sql}"))).scalars())


async def test_prefect_read_patterns_are_index_scans(engine: AsyncEngine) -> None:
    await load_million(engine)
    assert await count_events(engine) == EVENTS
    assert await count_events(engine, default=True) == 0
    not_indexed = {}
    for name, query in PATTERNS.items():
        explained = await plan(engine, query)
        if "Seq Scan" in explained or "Index" not in explained:
            not_indexed[name] = explained
    assert not_indexed == {}, "\n\n".join(f"{k}:\n{v}" for k, v in not_indexed.items())


async def count_events(engine: AsyncEngine, *, default: bool = False) -> int:
    """All events, or those in the DEFAULT partition (which no read should need)."""
    table = "events_default" if default else "events"
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())  # noqa: S608


async def test_the_local_server_runs_with_the_documented_settings(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        for name, value in SERVER_SETTINGS.items():
            shown = (await conn.execute(text(f"SHOW {name}"))).scalar_one()
            assert shown == value, name
