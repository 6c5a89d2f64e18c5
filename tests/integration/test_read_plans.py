"""Every read pattern of Prefect's `read_events` is an index scan on a
million events: the queries have the shape Prefect's filters build (see its
`prefect.server.events.filters`), newest first with a limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import event_resources, events
from worker.devtools.stack import SERVER_SETTINGS

EVENTS = 1_000_000
HOURS = 60

# A million events over the last 60 hours (three or four daily partitions):
# 1,000 names, 20,000 flow runs, 500 flows as related resources.
MILLION = """
INSERT INTO events (id, occurred, event, resource_id, resource, related_resource_ids,
                    related, payload, received)
SELECT gen_random_uuid(), now() - make_interval(secs => i * CAST(:step AS float8)),
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
        await conn.execute(text(MILLION), {"n": EVENTS, "step": HOURS * 3600 / EVENTS})
        await conn.execute(text(RESOURCES))
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE events"))
        await conn.execute(text("ANALYZE event_resources"))


def newest(*where: object) -> Select[tuple[object, ...]]:
    """Prefect's read_events: a time range, filters, newest first, a page."""
    until = datetime.now(UTC)
    since = until - timedelta(hours=HOURS)
    return (
        select(events)
        .where(events.c.occurred >= since, events.c.occurred <= until, *where)  # type: ignore[arg-type]
        .order_by(events.c.occurred.desc())
        .limit(50)
    )


def related(*where: object) -> object:
    """Prefect's related and any-resource filters: ids of events with such
    resource rows, in the same time range."""
    until = datetime.now(UTC)
    since = until - timedelta(hours=HOURS)
    rows = event_resources.c
    return events.c.id.in_(
        select(rows.event_id).where(rows.occurred >= since, rows.occurred <= until, *where)  # type: ignore[arg-type]
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
    not_indexed = {}
    for name, query in PATTERNS.items():
        explained = await plan(engine, query)
        if "Seq Scan" in explained or "Index" not in explained:
            not_indexed[name] = explained
    assert not_indexed == {}, "\n\n".join(f"{k}:\n{v}" for k, v in not_indexed.items())


async def count_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM events"))).scalar_one())


async def test_the_local_server_runs_with_the_documented_settings(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        for name, value in SERVER_SETTINGS.items():
            shown = (await conn.execute(text(f"SHOW {name}"))).scalar_one()
            assert shown == value, name
