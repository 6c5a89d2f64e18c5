"""Sharing a database: the worker's own version table, its `persister_`
tables, the move of an install made before they had those names, and the
databases it refuses (see `schemas.sharing`). On SQLite, no server needed;
tests/integration/test_beside_prefect.py runs the same against a real
Prefect server on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from schemas.migrate import upgrade
from schemas.sharing import (
    SHARED_VERSION_TABLE,
    UNPREFIXED,
    UNPREFIXED_INDEX,
    VERSION_TABLE,
    Refused,
)
from schemas.tables import consumer_offsets, dead_letters, metadata

OFFSETS = [{"group_id": "g", "topic": "t", "partition": p, "next_offset": 10 + p} for p in range(3)]
LETTER = {
    "group_id": "g",
    "topic": "t",
    "partition": 0,
    "offset": 7,
    "error_class": "InvalidJson",
    "error": "bad",
}


def tables(path: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def run(path: Path, *statements: str) -> list[list[tuple[object, ...]]]:
    """Run `statements` in one transaction; the rows each returned."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            results = [conn.exec_driver_sql(s) for s in statements]
            return [[tuple(r) for r in result] if result.returns_rows else [] for result in results]
    finally:
        engine.dispose()


def unprefix(path: Path) -> None:
    """Make a migrated database look as an install made before the prefix:
    the bookkeeping tables under their old names, the revision in
    `alembic_version`."""
    statements = [f"ALTER TABLE persister_{name} RENAME TO {name}" for name in UNPREFIXED]
    statements += [
        f"DROP INDEX ix_persister_{UNPREFIXED_INDEX[3:]}",
        f"CREATE UNIQUE INDEX {UNPREFIXED_INDEX}"
        ' ON dead_letters (group_id, topic, partition, "offset")',
        f"ALTER TABLE {VERSION_TABLE} RENAME TO {SHARED_VERSION_TABLE}",
    ]
    run(path, *statements)


def test_an_install_made_before_the_prefix_is_moved_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(consumer_offsets), OFFSETS)
            conn.execute(sa.insert(dead_letters), LETTER)
        unprefix(path)
        assert {"consumer_offsets", "dead_letters", SHARED_VERSION_TABLE} <= tables(path)

        upgrade(url)

        assert tables(path) == set(metadata.tables) | {VERSION_TABLE}
        with engine.connect() as conn:
            offsets = conn.execute(sa.select(consumer_offsets).order_by("partition")).mappings()
            assert [
                {k: r[k] for k in ("group_id", "topic", "partition", "next_offset")}
                for r in offsets
            ] == OFFSETS
            letters = conn.execute(sa.select(dead_letters.c.offset, dead_letters.c.error_class))
            assert letters.all() == [(7, "InvalidJson")]
            indexes = sa.inspect(conn).get_indexes("persister_dead_letters")
            assert sorted((ix["name"], bool(ix["unique"])) for ix in indexes) == [
                (f"ix_persister_{UNPREFIXED_INDEX[3:]}", True),
                ("ix_persister_dead_letters__unpublished", False),
            ]
            version = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608
            assert version.scalars().all() == ["0009"]
    finally:
        engine.dispose()


def prefect_like(path: Path, revision: str = "91e2b8f3d6a4") -> None:
    """What a Prefect server's database has that the worker looks at: its
    Alembic history, its first table, and its events tables."""
    run(
        path,
        f"CREATE TABLE {SHARED_VERSION_TABLE} (version_num VARCHAR(32) PRIMARY KEY)",
        f"INSERT INTO {SHARED_VERSION_TABLE} VALUES ('{revision}')",  # noqa: S608
        "CREATE TABLE flow_run (id CHAR(32) PRIMARY KEY)",
        "CREATE TABLE events (id CHAR(32) PRIMARY KEY, occurred DATETIME NOT NULL)",
        "CREATE TABLE event_resources (id CHAR(32) PRIMARY KEY)",
    )


def test_beside_prefect_only_the_bookkeeping_is_made(tmp_path: Path) -> None:
    path = tmp_path / "prefect.db"
    prefect_like(path)
    before = tables(path)

    upgrade(f"sqlite+aiosqlite:///{path}", "prefect")
    upgrade(f"sqlite+aiosqlite:///{path}", "prefect")

    own = {t for t in metadata.tables if t.startswith("persister_")}
    assert tables(path) == before | own | {VERSION_TABLE}
    history = f"SELECT version_num FROM {SHARED_VERSION_TABLE}"  # noqa: S608
    assert run(path, history) == [[("91e2b8f3d6a4",)]]


def refused(path: Path, event_tables: str = "persister") -> str:
    before = tables(path)
    with pytest.raises(Refused) as caught:
        upgrade(f"sqlite+aiosqlite:///{path}", event_tables)
    assert tables(path) == before, "a refusal changes nothing"
    line = str(caught.value)
    assert "\n" not in line
    return line


def test_a_prefect_database_is_refused_without_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "prefect.db"
    prefect_like(path)
    assert refused(path) == (
        "the database is a Prefect server's: set PERSISTER_EVENT_TABLES=prefect "
        "to write into Prefect's events tables"
    )


def test_another_applications_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    run(
        path,
        f"CREATE TABLE {SHARED_VERSION_TABLE} (version_num VARCHAR(32) PRIMARY KEY)",
        f"INSERT INTO {SHARED_VERSION_TABLE} VALUES ('ae1027a6acf')",  # noqa: S608
    )
    for event_tables in ("persister", "prefect"):
        assert refused(path, event_tables) == (
            f"the database holds another application's migrations ({SHARED_VERSION_TABLE} "
            "at ae1027a6acf); give the persister a database of its own, or a Prefect server's"
        )


def test_an_events_table_the_worker_did_not_make_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    run(path, "CREATE TABLE events (id INTEGER PRIMARY KEY)")
    assert refused(path).startswith("the database has an events table the persister did not make")
