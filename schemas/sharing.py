"""Sharing a database with another application, Prefect's server above all.

The worker's own tables start with `persister_` and its migrations keep their
own version table (`persister_alembic_version`): Prefect's tables and its
Alembic history (`alembic_version`) are never touched. `events` and
`event_resources` are the one pair both read; who makes them is
`PERSISTER_EVENT_TABLES`:

- `persister` (the worker alone): the worker's migrations make them,
  partitioned by time. A database that holds a Prefect server is refused: its
  `events` is Prefect's.
- `prefect`: Prefect's migrations make them (unpartitioned, keyed by `id`),
  before or after `persister migrate`; the worker's migrations leave them
  alone and the worker writes into them. A database whose `events` is the
  worker's own partitioned table is refused: Prefect's migrations cannot run
  on it.

Before the migrations run, `prepare` refuses what cannot be shared (with one
line, nothing changed) and moves an install made before the version table had
its own name: its revisions from `alembic_version` to
`persister_alembic_version`, and its bookkeeping tables to their
`persister_` names, in the migrations' transaction.
"""

from __future__ import annotations

from collections.abc import Collection

from alembic import op
from sqlalchemy import Connection, inspect, text

VERSION_TABLE = "persister_alembic_version"
SHARED_VERSION_TABLE = "alembic_version"
PREFIX = "persister_"
# The bookkeeping tables as they were named before they had the prefix.
UNPREFIXED = ("consumer_offsets", "dead_letters", "leader_leases", "partition_controls")
EVENT_TABLES = ("events", "event_resources")
# Prefect's first migration makes it, on every Prefect server's database.
PREFECT_MARK = "flow_run"
# dead_letters' unique index, under its name before the prefix.
UNPREFIXED_INDEX = "ix_dead_letters__group_id_topic_partition_offset"


class Refused(Exception):
    """The database cannot be shared this way; the message is one line."""


def owns_event_tables() -> bool:
    """In a migration: whether the worker makes `events` and `event_resources`
    (`PERSISTER_EVENT_TABLES=persister`) or Prefect's migrations do."""
    attributes = op.get_context().config.attributes  # type: ignore[union-attr]
    return bool(attributes.get("event_tables", "persister") == "persister")


def _versions(conn: Connection) -> list[str]:
    rows = conn.exec_driver_sql(f"SELECT version_num FROM {SHARED_VERSION_TABLE}")  # noqa: S608
    return [str(v) for (v,) in rows]


def _partitioned(conn: Connection, table: str) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:name)"), {"name": table}
    ).scalar()
    return kind == "p"


def prepare(conn: Connection, event_tables: str, ours: Collection[str]) -> None:
    """Refuse a database that cannot be shared as `event_tables` says, or move
    an install made before the worker's version table had its own name."""
    tables = set(inspect(conn).get_table_names())
    shared = _versions(conn) if SHARED_VERSION_TABLE in tables else []
    foreign = [v for v in shared if v not in ours]
    prefect = PREFECT_MARK in tables
    mine = VERSION_TABLE in tables or len(foreign) < len(shared)
    if foreign and not prefect:
        raise Refused(
            f"the database holds another application's migrations ({SHARED_VERSION_TABLE} "
            f"at {', '.join(foreign)}); give the persister a database of its own, "
            "or a Prefect server's"
        )
    if event_tables == "persister" and prefect:
        raise Refused(
            "the database is a Prefect server's: set PERSISTER_EVENT_TABLES=prefect "
            "to write into Prefect's events tables"
        )
    if event_tables == "persister" and not mine and "events" in tables:
        raise Refused(
            "the database has an events table the persister did not make; "
            "give the persister a database of its own (or set PERSISTER_EVENT_TABLES=prefect "
            "if it is Prefect's)"
        )
    if event_tables == "prefect" and _partitioned(conn, "events"):
        raise Refused(
            "events is the persister's own partitioned table, which Prefect's migrations "
            "cannot run on; PERSISTER_EVENT_TABLES=prefect needs a database where "
            "Prefect's migrations make the events tables"
        )
    if VERSION_TABLE not in tables and len(foreign) < len(shared):
        _move_unprefixed(conn, [v for v in shared if v in ours], tables)


def _move_unprefixed(conn: Connection, versions: list[str], tables: set[str]) -> None:
    conn.exec_driver_sql(
        f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL,"
        f" CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
    )
    # Table names are this module's constants; versions are parameters.
    insert = text(f"INSERT INTO {VERSION_TABLE} VALUES (:v)")  # noqa: S608
    remove = text(f"DELETE FROM {SHARED_VERSION_TABLE} WHERE version_num = :v")  # noqa: S608
    for version in versions:
        conn.execute(insert, {"v": version})
        conn.execute(remove, {"v": version})
    if not _versions(conn):
        conn.exec_driver_sql(f"DROP TABLE {SHARED_VERSION_TABLE}")
    postgresql = conn.dialect.name == "postgresql"
    for name in UNPREFIXED:
        if name not in tables:
            continue
        conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {PREFIX}{name}")
        if postgresql:
            conn.exec_driver_sql(
                f"ALTER TABLE {PREFIX}{name} RENAME CONSTRAINT pk_{name} TO pk_{PREFIX}{name}"
            )
    if "dead_letters" not in tables:
        return
    new_index = UNPREFIXED_INDEX.replace("ix_", f"ix_{PREFIX}", 1)
    if postgresql:
        conn.exec_driver_sql(f"ALTER INDEX {UNPREFIXED_INDEX} RENAME TO {new_index}")
        conn.exec_driver_sql(
            f"ALTER SEQUENCE dead_letters_id_seq RENAME TO {PREFIX}dead_letters_id_seq"
        )
        return
    # SQLite cannot rename an index.
    conn.exec_driver_sql(f"DROP INDEX {UNPREFIXED_INDEX}")
    conn.exec_driver_sql(
        f"CREATE UNIQUE INDEX {new_index} ON {PREFIX}dead_letters"
        ' (group_id, topic, partition, "offset")'
    )
