"""Time-partitioned events and event_resources; keys and indexes led by time

PostgreSQL: both tables become partitioned by range of `occurred`, with a
DEFAULT partition and daily partitions covering the rows there are (up to
92 days back) and the next two days; `persister migrate` and the trimmer then
create the partitions of the configured width. Keys: events (id, occurred),
event_resources (occurred, event_id, resource_role, resource_id). Indexes on
text use text_pattern_ops (prefix searches); the `occurred` indexes the keys
now lead with are gone. JSON columns are TOAST-compressed with lz4 where the
server has it.

SQLite: the same keys and indexes, not partitioned.

Every row is copied into the new tables, in the migration's transaction.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from schemas.sharing import owns_event_tables
from schemas.table_partitions import create_default_sql, create_sql, slots

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

EVENT_COLUMNS = (
    "id, occurred, event, resource_id, resource, related_resource_ids, related, payload,"
    " received, recorded, follows, created, updated"
)
RESOURCE_COLUMNS = "event_id, resource_role, resource_id, occurred, resource, id, created, updated"
# The SQLite form of gen_random_uuid() (see revision 0004).
SQLITE_RANDOM_UUID = (
    "lower(hex(randomblob(4)) || hex(randomblob(2)) || '4' || substr(hex(randomblob(2)), 2)"
    " || substr('89AB', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2)"
    " || hex(randomblob(6)))"
)
MIGRATED_DAYS_BACK = 92
DAYS_AHEAD = 2

OLD_INDEXES = {
    "events": {
        "ix_events__occurred": "occurred",
        "ix_events__event_occurred": "event, occurred",
        "ix_events__resource_id_occurred": "resource_id, occurred",
    },
    "event_resources": {
        "ix_event_resources__resource_id_occurred": "resource_id, occurred",
        "ix_event_resources__occurred": "occurred",
    },
}
OLD_KEYS = {"events": "id", "event_resources": "event_id, resource_role, resource_id"}
NEW_INDEXES = {
    "events": {
        "ix_events__occurred": ("occurred", True),
        "ix_events__event_occurred": ("event {ops}, occurred", False),
        "ix_events__resource_id_occurred": ("resource_id {ops}, occurred", False),
    },
    "event_resources": {
        "ix_event_resources__resource_id_occurred": ("resource_id {ops}, occurred", False),
    },
}
NEW_KEYS = {
    "events": "id, occurred",
    "event_resources": "occurred, event_id, resource_role, resource_id",
}


def _columns(table: str, postgresql: bool, lz4: bool) -> str:
    uuid = "uuid" if postgresql else "CHAR(32)"
    json = "jsonb" if postgresql else "JSON"
    if lz4:
        json += " COMPRESSION lz4"
    ts = "timestamp with time zone" if postgresql else "DATETIME"
    now = "now()" if postgresql else "(CURRENT_TIMESTAMP)"
    random_uuid = "gen_random_uuid()" if postgresql else f"({SQLITE_RANDOM_UUID})"
    stamps = f"created {ts} DEFAULT {now} NOT NULL, updated {ts} DEFAULT {now} NOT NULL"
    if table == "events":
        return (
            f"id {uuid} NOT NULL, occurred {ts} NOT NULL, event VARCHAR(1024) NOT NULL,"
            f" resource_id TEXT NOT NULL, resource {json} NOT NULL,"
            f" related_resource_ids {json} NOT NULL, related {json} NOT NULL,"
            f" payload {json} NOT NULL, received {ts} NOT NULL,"
            f" recorded {ts} DEFAULT {now} NOT NULL, follows {uuid}, {stamps}"
        )
    return (
        f"event_id {uuid} NOT NULL, resource_role TEXT NOT NULL, resource_id TEXT NOT NULL,"
        f" occurred {ts} NOT NULL, resource {json} NOT NULL,"
        f" id {uuid} DEFAULT {random_uuid} NOT NULL, {stamps}"
    )


def _lz4(bind: sa.Connection) -> bool:
    """Whether the server was built with lz4 (Debian's and most others are)."""
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("SET LOCAL default_toast_compression = lz4")
    except sa.exc.DBAPIError:
        return False
    return True


def _set_aside(table: str) -> None:
    """Rename the table out of the way, with its key and indexes."""
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    for name in OLD_INDEXES[table]:
        op.execute(f"DROP INDEX {name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {table}_old RENAME CONSTRAINT pk_{table} TO pk_{table}_old")


def _create_new(table: str, postgresql: bool, lz4: bool) -> None:
    key = f"CONSTRAINT pk_{table} PRIMARY KEY ({NEW_KEYS[table]})"
    if postgresql:
        if table == "event_resources":
            key += " WITH (fillfactor = 100)"
        op.execute(
            f"CREATE TABLE {table} ({_columns(table, True, lz4)}, {key})"
            " PARTITION BY RANGE (occurred)"
        )
    else:
        op.execute(f"CREATE TABLE {table} ({_columns(table, False, False)}, {key})")
    for name, (columns, append_only) in NEW_INDEXES[table].items():
        ops = "text_pattern_ops" if postgresql else ""
        storage = " WITH (fillfactor = 100)" if append_only and postgresql else ""
        op.execute(f"CREATE INDEX {name} ON {table} ({columns.format(ops=ops)}){storage}")


def _create_partitions(bind: sa.Connection) -> None:
    """DEFAULT partitions, and daily ones over the rows being migrated (from
    at most MIGRATED_DAYS_BACK ago) and the next days."""
    for table in ("events", "event_resources"):
        op.execute(create_default_sql(table))
    now = datetime.now(UTC)
    oldest, newest = bind.execute(
        sa.text("SELECT min(occurred), max(occurred) FROM events_old")
    ).one()
    start = max(oldest or now, now - timedelta(days=MIGRATED_DAYS_BACK))
    end = max(min(newest or now, now), now) + timedelta(days=DAYS_AHEAD)
    for r in slots(min(start, now), end, timedelta(days=1)):
        for table in ("events", "event_resources"):
            op.execute(create_sql(table, r))


def _copy(table: str, columns: str, conflict: str = "") -> None:
    # Names and clauses are this module's constants.
    op.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_old{conflict}")  # noqa: S608
    op.execute(f"DROP TABLE {table}_old")


def upgrade() -> None:
    if not owns_event_tables():
        return  # Prefect's migrations own events and event_resources
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    lz4 = postgresql and _lz4(bind)
    for table in ("events", "event_resources"):
        _set_aside(table)
        _create_new(table, postgresql, lz4)
    if postgresql:
        _create_partitions(bind)
    _copy("events", EVENT_COLUMNS)
    _copy("event_resources", RESOURCE_COLUMNS)


def downgrade() -> None:
    """Back to one unpartitioned table each. An id stored with two different
    `occurred` keeps one row (the earliest), as the old key allows one."""
    if not owns_event_tables():
        return  # Prefect's migrations own events and event_resources
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in ("events", "event_resources"):
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
        for name in NEW_INDEXES[table]:
            op.execute(f"DROP INDEX {name}")
        if postgresql:
            op.execute(f"ALTER TABLE {table}_old RENAME CONSTRAINT pk_{table} TO pk_{table}_old")
        key = f"CONSTRAINT pk_{table} PRIMARY KEY ({OLD_KEYS[table]})"
        op.execute(f"CREATE TABLE {table} ({_columns(table, postgresql, False)}, {key})")
        for name, columns in OLD_INDEXES[table].items():
            op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    # SQLite needs the WHERE to read ON CONFLICT as the insert's clause.
    ordered = " WHERE true ORDER BY occurred ON CONFLICT DO NOTHING"
    _copy("events", EVENT_COLUMNS, ordered)
    _copy("event_resources", RESOURCE_COLUMNS, ordered)
