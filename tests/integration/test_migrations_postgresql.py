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
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import alembic_config
from schemas.sharing import SHARED_VERSION_TABLE, UNPREFIXED, UNPREFIXED_INDEX, VERSION_TABLE
from schemas.tables import event_resources, events, metadata
from tests import old_rows
from tests.integration.conftest import only_partitions_ahead
from tests.integration.support import (
    create_topic,
    end_offsets,
    fresh_database,
    running,
    send,
    settings_for,
    unique,
    upgrade_async,
    wait_persisted,
)
from tests.integration.workers import run_command
from tests.table_partition_names import is_partition
from worker.devtools.loadgen import messages
from worker.devtools.stack import StackInfo
from worker.pipeline.connections import create_engine
from worker.pipeline.persister import Persister


async def downgrade(url: str, revision: str) -> None:
    # The migration environment runs its own event loop: not in this one.
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def differences(engine: AsyncEngine, target: MetaData) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        opts = {
            "compare_type": True,
            "compare_server_default": True,
            "version_table": VERSION_TABLE,
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
        await only_partitions_ahead(url)


# An install made before the worker's tables had their `persister_` names and
# its migrations their own version table, as `persister migrate` left it.
UNPREFIX = [
    *(f"ALTER TABLE persister_{t} RENAME TO {t}" for t in UNPREFIXED),
    *(f"ALTER TABLE {t} RENAME CONSTRAINT pk_persister_{t} TO pk_{t}" for t in UNPREFIXED),
    f"ALTER INDEX ix_persister_{UNPREFIXED_INDEX[3:]} RENAME TO {UNPREFIXED_INDEX}",
    "ALTER SEQUENCE persister_dead_letters_id_seq RENAME TO dead_letters_id_seq",
    f"ALTER TABLE {VERSION_TABLE} RENAME TO {SHARED_VERSION_TABLE}",
    f"ALTER TABLE {SHARED_VERSION_TABLE}"
    f" RENAME CONSTRAINT {VERSION_TABLE}_pkc TO {SHARED_VERSION_TABLE}_pkc",
]
EVERY_TABLE = [*(f"persister_{t}" for t in UNPREFIXED), "events", "event_resources"]


async def test_an_install_made_before_the_prefix_upgrades_in_place(
    stack_info: StackInfo,
) -> None:
    async with fresh_database(stack_info.database_url) as url:
        code, _, err = await asyncio.to_thread(
            run_command, stack_info, "migrate", env=dict(DATABASE_URL=url)
        )
        assert code == 0, err
        topic = unique("upgrade")
        await create_topic(stack_info, topic, 2)
        await send(stack_info, topic, messages(300, seed=5, invalid_every=50))
        ends = await end_offsets(stack_info, topic, 2)
        engine = create_engine(url, pool_size=1)
        try:
            settings = settings_for(stack_info, topic, database_url=url, dead_letter_topic="")
            async with running(Persister(settings, engine)):
                await wait_persisted(engine, settings.group_id, topic, ends)
            dump = {t: text(f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in EVERY_TABLE}  # noqa: S608
            async with engine.begin() as conn:
                before = {t: (await conn.execute(q)).all() for t, q in dump.items()}
                for statement in UNPREFIX:
                    await conn.execute(text(statement))
            assert [
                len(before[t])
                for t in ("persister_consumer_offsets", "persister_dead_letters", "events")
            ] == [2, 6, 294]
            await engine.dispose()

            code, _, err = await asyncio.to_thread(
                run_command, stack_info, "migrate", env=dict(DATABASE_URL=url)
            )

            assert code == 0, err
            async with engine.connect() as conn:
                after = {t: (await conn.execute(q)).all() for t, q in dump.items()}
                names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
                version = await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))  # noqa: S608
                assert version.scalars().all() == [
                    ScriptDirectory.from_config(alembic_config(url)).get_current_head()
                ]
            assert after == before
            assert SHARED_VERSION_TABLE not in names
            assert not names & set(UNPREFIXED)
            assert await differences(engine, metadata) == []
            # The dead letters' ids go on from where they were.
            async with engine.begin() as conn:
                new_id = await conn.execute(text("SELECT nextval('persister_dead_letters_id_seq')"))
                assert (
                    new_id.scalar_one() == max(r[0] for r in before["persister_dead_letters"]) + 1
                )
        finally:
            await engine.dispose()
