"""The Alembic migrations build exactly the schema `schemas/tables.py` describes.

Checked on SQLite (no server needed): the migrated database is reflected and
compared with the table metadata by Alembic's autogenerate, which reports any
missing or extra table, column, index or constraint, and any differing type,
nullability or server default.

The data migrations run here on SQLite; their PostgreSQL SQL differs and runs
in tests/integration/test_migrations_postgresql.py.

These are sync tests on purpose: the migration environment runs its own event
loop with `asyncio.run`, which cannot run inside the test's loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from schemas.migrate import alembic_config, upgrade
from schemas.sharing import VERSION_TABLE
from schemas.tables import event_resources, events, metadata
from tests import old_rows

TABLES = {
    "events",
    "event_resources",
    "persister_consumer_offsets",
    "persister_dead_letters",
    "persister_leader_leases",
    "persister_partition_controls",
    "persister_seen_messages",
}

INDEXES = {
    "events": {
        "ix_events__occurred",
        "ix_events__event_occurred",
        "ix_events__resource_id_occurred",
    },
    "event_resources": {"ix_event_resources__resource_id_occurred"},
    "persister_consumer_offsets": set(),
    "persister_dead_letters": {
        "ix_persister_dead_letters__group_id_topic_partition_offset",
        "ix_persister_dead_letters__unpublished",
    },
    "persister_leader_leases": set(),
    "persister_partition_controls": set(),
    "persister_seen_messages": {"ix_persister_seen_messages__seen"},
}

PRIMARY_KEYS = {
    "events": ("pk_events", ["id", "occurred"]),
    "event_resources": (
        "pk_event_resources",
        ["occurred", "event_id", "resource_role", "resource_id"],
    ),
    "persister_consumer_offsets": (
        "pk_persister_consumer_offsets",
        ["group_id", "topic", "partition"],
    ),
    "persister_dead_letters": ("pk_persister_dead_letters", ["id"]),
    "persister_leader_leases": ("pk_persister_leader_leases", ["name"]),
    "persister_partition_controls": (
        "pk_persister_partition_controls",
        ["group_id", "topic", "partition"],
    ),
    "persister_seen_messages": ("pk_persister_seen_messages", ["key"]),
}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("migrations") / "m.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def connection(migrated: Path) -> Iterator[sa.Connection]:
    engine = sa.create_engine(f"sqlite:///{migrated}")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def differences(connection: sa.Connection, target: sa.MetaData) -> list[Any]:
    # compare_type is on by default; server defaults are compared too. No
    # exclusions are needed: on SQLite the JSON/JSONB variant reflects as JSON,
    # Uuid as its CHAR(32) storage and BigInteger-with-Integer-variant as
    # INTEGER, all of which Alembic treats as matching the metadata.
    opts = {"compare_type": True, "compare_server_default": True, "version_table": VERSION_TABLE}
    context = MigrationContext.configure(connection, opts=opts)
    return list(compare_metadata(context, target))


def test_migrated_schema_matches_the_table_metadata(connection: sa.Connection) -> None:
    assert differences(connection, metadata) == []


def test_the_comparison_would_notice_a_difference(connection: sa.Connection) -> None:
    """Guards the test above against comparing nothing with nothing."""
    diffs = differences(connection, sa.MetaData())
    assert sorted(d[1].name for d in diffs if d[0] == "remove_table") == sorted(TABLES)


def test_the_comparison_would_notice_a_column_difference(connection: sa.Connection) -> None:
    changed = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["events"].c.follows.nullable = False
    changed.tables["events"].c.event.type = sa.String(100)
    diffs = differences(connection, changed)
    assert sorted((d[0][0], d[0][3]) for d in diffs) == [
        ("modify_nullable", "follows"),
        ("modify_type", "event"),
    ]


def test_migrated_tables(connection: sa.Connection) -> None:
    assert set(sa.inspect(connection).get_table_names()) == TABLES | {"persister_alembic_version"}


def test_metadata_tables() -> None:
    assert set(metadata.tables) == TABLES


def test_migrated_indexes(connection: sa.Connection) -> None:
    inspector = sa.inspect(connection)
    assert {t: {ix["name"] for ix in inspector.get_indexes(t)} for t in TABLES} == INDEXES


def test_metadata_indexes() -> None:
    assert {name: {ix.name for ix in t.indexes} for name, t in metadata.tables.items()} == INDEXES


def test_only_the_dead_letter_index_is_unique(connection: sa.Connection) -> None:
    inspector = sa.inspect(connection)
    unique = {ix["name"] for t in TABLES for ix in inspector.get_indexes(t) if ix["unique"]}
    assert unique == {"ix_persister_dead_letters__group_id_topic_partition_offset"}


def test_migrated_primary_keys(connection: sa.Connection) -> None:
    inspector = sa.inspect(connection)
    found = {}
    for table in TABLES:
        pk = inspector.get_pk_constraint(table)
        found[table] = (pk["name"], pk["constrained_columns"])
    assert found == PRIMARY_KEYS


def revision_of(connection: sa.Connection) -> str | None:
    opts = {"version_table": VERSION_TABLE}
    return MigrationContext.configure(connection, opts=opts).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_migrations_form_one_line_of_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert [r.revision for r in script.walk_revisions()] == [
        "0009",
        "0008",
        "0007",
        "0006",
        "0005",
        "0004",
        "0003",
        "0002",
        "0001",
    ]


def test_migrated_database_is_at_head(connection: sa.Connection) -> None:
    assert revision_of(connection) == head()


def test_upgrading_again_is_a_no_op(migrated: Path, connection: sa.Connection) -> None:
    upgrade(f"sqlite+aiosqlite:///{migrated}")
    assert revision_of(connection) == head()
    assert differences(connection, metadata) == []


def test_0004_keeps_the_data_and_drops_the_id_and_role_labels(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url, revision=old_rows.BEFORE)
    engine = sa.create_engine(f"sqlite:///{path}")
    er = event_resources.c
    by_key = sa.select(event_resources).order_by(er.event_id, er.resource_role)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(events), old_rows.EVENTS)
            conn.execute(sa.insert(event_resources), old_rows.RESOURCES)

        upgrade(url)
        with engine.connect() as conn:
            stored = [dict(r) for r in conn.execute(by_key).mappings()]
            stored_events = [dict(r) for r in conn.execute(sa.select(events)).mappings()]
        assert [(r["event_id"], r["resource_role"], r["resource"]) for r in stored] == (
            old_rows.MIGRATED_RESOURCES
        )
        assert len({r["id"] for r in stored}) == 3
        assert {r["id"].version for r in stored} == {4}
        assert all(r["created"] and r["updated"] for r in stored + stored_events)
        assert [old_rows.unchanged(e) for e in stored_events] == [
            old_rows.unchanged(e) for e in old_rows.EVENTS
        ]

        command.downgrade(alembic_config(url), old_rows.BEFORE)
        with engine.connect() as conn:
            restored = [
                r.resource
                for r in conn.execute(
                    sa.text("SELECT resource FROM event_resources ORDER BY event_id, resource_role")
                )
            ]
        assert [orjson.loads(r) for r in restored] == [r["resource"] for r in old_rows.RESOURCES]
    finally:
        engine.dispose()


def test_0006_keeps_every_row_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "before-0006.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url, revision="0005")
    engine = sa.create_engine(f"sqlite:///{path}")
    resources = [{**r, "resource": {"prefect.resource.name": "x"}} for r in old_rows.RESOURCES]

    def everything(conn: sa.Connection) -> list[list[dict[str, Any]]]:
        return [
            [
                dict(r)
                for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2, 3")).mappings()  # noqa: S608
            ]
            for table in ("events", "event_resources")
        ]

    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(events), old_rows.EVENTS)
            conn.execute(sa.insert(event_resources), resources)
            before = everything(conn)
        assert [len(rows) for rows in before] == [2, 3]

        upgrade(url)
        with engine.connect() as conn:
            assert everything(conn) == before

        command.downgrade(alembic_config(url), "0005")
        with engine.connect() as conn:
            assert everything(conn) == before
    finally:
        engine.dispose()
