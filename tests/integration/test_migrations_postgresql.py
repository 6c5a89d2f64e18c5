"""Data migrations on PostgreSQL, whose SQL differs from SQLite's (see
tests/unit/schemas/test_migrations.py for the schema checks and the SQLite runs).

The test moves the session's database down to an older revision and back up
to head, so every later test still finds the schema at head.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import alembic_config, upgrade_async
from schemas.partitions import is_partition
from schemas.tables import event_resources, events, metadata
from tests import old_rows
from tests.integration.conftest import partitions_ahead
from worker.devtools.stack import StackInfo


async def downgrade(url: str, revision: str) -> None:
    # The migration environment runs its own event loop: not in this one.
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def differences(engine: AsyncEngine, target: MetaData) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        opts = {
            "compare_type": True,
            "compare_server_default": True,
            # Partitions are the parents' tables, not tables of the schema.
            "include_name": lambda name, kind, _: kind != "table" or not is_partition(name),
        }
        return list(compare_metadata(MigrationContext.configure(conn, opts=opts), target))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def test_migrated_schema_matches_the_table_metadata(engine: AsyncEngine) -> None:
    assert await differences(engine, metadata) == []


async def test_the_comparison_would_notice_a_missing_server_default(engine: AsyncEngine) -> None:
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["event_resources"].c.id.server_default = None
    diffs = await differences(engine, changed)
    assert [(d[0][0], d[0][2], d[0][3]) for d in diffs] == [
        ("modify_default", "event_resources", "id")
    ]


async def test_0004_keeps_the_data_and_drops_the_id_and_role_labels(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    url = stack_info.database_url
    er = event_resources.c
    by_key = select(event_resources).order_by(er.event_id, er.resource_role)
    await downgrade(url, old_rows.BEFORE)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(events), old_rows.EVENTS)
            await conn.execute(insert(event_resources), old_rows.RESOURCES)

        before = datetime.now(UTC)
        await upgrade_async(url)
        after = datetime.now(UTC)
        async with engine.connect() as conn:
            stored = [dict(r) for r in (await conn.execute(by_key)).mappings()]
            stored_events = [
                dict(r)
                for r in (await conn.execute(select(events).order_by(events.c.id))).mappings()
            ]
        assert [(r["event_id"], r["resource_role"], r["resource"]) for r in stored] == (
            old_rows.MIGRATED_RESOURCES
        )
        assert len({r["id"] for r in stored}) == 3
        assert {r["id"].version for r in stored} == {4}
        # Rows that existed before were created, as far as anyone can tell,
        # when the migration ran.
        for row in stored + stored_events:
            assert before <= row["created"] == row["updated"] <= after
        assert stored_events == [
            {**e, "recorded": s["recorded"], "created": s["created"], "updated": s["updated"]}
            for e, s in zip(old_rows.EVENTS, stored_events, strict=True)
        ]

        await downgrade(url, old_rows.BEFORE)
        async with engine.connect() as conn:
            restored = (
                await conn.execute(select(er.resource).order_by(er.event_id, er.resource_role))
            ).scalars()
            assert list(restored) == [r["resource"] for r in old_rows.RESOURCES]
    finally:
        await engine.dispose()  # the downgrade changed the tables under its pool
        await upgrade_async(url)


async def test_0006_partitions_the_tables_and_keeps_every_row(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    url = stack_info.database_url
    now = datetime.now(UTC).replace(microsecond=0)
    # Rows of today and three days ago get daily partitions; January's are
    # beyond the 92 days the migration covers, and go to the DEFAULT partition.
    dated = [
        {**e, "id": uuid4(), "occurred": when}
        for e in old_rows.EVENTS
        for when in (old_rows.OCCURRED, now - timedelta(days=3), now)
    ]
    resources = [
        {
            "event_id": e["id"],
            "resource_role": role,
            "resource_id": f"r{i}",
            "occurred": e["occurred"],
            "resource": {"n": str(i)},
        }
        for e in dated
        for i, role in enumerate(("", "flow"))
    ]
    everything = {
        table: text(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4")  # noqa: S608
        for table in ("events", "event_resources")
    }
    placed = text("SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1 ORDER BY 1")
    await downgrade(url, "0005")
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(events), dated)
            await conn.execute(insert(event_resources), resources)
            before = {t: (await conn.execute(q)).all() for t, q in everything.items()}
        assert [len(rows) for rows in before.values()] == [6, 12]

        await engine.dispose()
        await upgrade_async(url)
        async with engine.connect() as conn:
            after = {t: (await conn.execute(q)).all() for t, q in everything.items()}
            where: dict[str, int] = {str(k): int(n) for k, n in (await conn.execute(placed)).all()}
        assert after == before
        day = "events_p{:%Y%m%d}_0000"
        assert where == {
            "events_default": 2,
            day.format(now - timedelta(days=3)): 2,
            day.format(now): 2,
        }
    finally:
        await engine.dispose()
        await upgrade_async(url)
        await partitions_ahead(url)
