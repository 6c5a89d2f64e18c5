"""Table definitions (SQLAlchemy Core). Migrations in `schemas/migrations` create
them; nothing creates tables at write time.

`events` and `event_resources` have every column of Prefect's models of them
(`Event` and `EventResource`), so Prefect's own storage code reads them; the
values are those of Prefect's `as_database_row()` and
`as_database_resource_rows()`. Columns Prefect's code fills on its own (the
row ids of `event_resources`, `created`, `updated`, `recorded`) are filled by
the database here, so the insert does not carry them.

Beside a Prefect server (`PERSISTER_EVENT_TABLES=prefect`) the worker writes
Prefect's own `events` and `event_resources`, which Prefect's migrations make
(unpartitioned, keyed by `id`); the two definitions here are then only the
columns it writes. The worker's own tables all start with `persister_`, and
its migrations keep their own version table (`persister_alembic_version`), so
none of them can meet a table of Prefect's.

On PostgreSQL both are partitioned by range of `occurred` (see
`schemas.table_partitions`): every key includes `occurred`, and an index that leads
with it is appended to at its right edge, which is cheap at any size. The
indexes led by random values (event ids, names, resource ids) stay as small
as one partition.

Each key and index exists for a named query:

- primary key of ``events`` ``(id, occurred)``: idempotent inserts (the same
  id and occurred is stored once), and Prefect's lookups of events by id.
- ``ix_events__occurred``: time-range reads ("events since T", newest first)
  and the trimmer's ``occurred < cutoff`` batches.
- ``ix_events__event_occurred``: reads by event name and name prefix over time
  (``text_pattern_ops``, so ``LIKE 'prefix%'`` is a range scan in any collation),
  and per-type retention.
- ``ix_events__resource_id_occurred``: events of a resource id or id prefix.
- primary key of ``event_resources`` ``(occurred, event_id, resource_role,
  resource_id)``: one copy of each resource row; time-range reads of resource
  rows and the trimmer's batches.
- ``ix_event_resources__resource_id_occurred``: events that mention a resource
  id or id prefix in any role (the related-resource lookup).
- ``ix_persister_dead_letters__group_id_topic_partition_offset`` (unique): finding a dead
  letter by where it came from, and writing each one once.
- ``ix_persister_dead_letters__unpublished`` (partial: the rows not yet on the
  dead-letter topic): the sender's reads of a partition's outbox, by offset.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s__%(column_0_N_name)s",
        "uq": "uq_%(table_name)s__%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSONB on PostgreSQL (indexable, compact); plain JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)


class RandomUuid(FunctionElement[Any]):
    """A new random (version 4) UUID for each row, made by the database."""

    type = Uuid()
    inherit_cache = True


@compiles(RandomUuid, "postgresql")
def _random_uuid_postgresql(element: RandomUuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "gen_random_uuid()"


# The 32 hex digits SQLAlchemy's Uuid is stored as on SQLite, with the
# version and variant digits of a version 4 UUID.
SQLITE_RANDOM_UUID = (
    "lower(hex(randomblob(4)) || hex(randomblob(2)) || '4' || substr(hex(randomblob(2)), 2)"
    " || substr('89AB', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2)"
    " || hex(randomblob(6)))"
)


@compiles(RandomUuid, "sqlite")
def _random_uuid_sqlite(element: RandomUuid, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_RANDOM_UUID


# Index entries that only grow at their right edge (led by `occurred`) are
# packed full: nothing is ever inserted between them.
APPEND_ONLY: dict[str, Any] = {"fillfactor": 100}
# A btree on text answers LIKE 'prefix%' only with these operators, unless
# the database collation happens to be "C".
PATTERN_OPS = "text_pattern_ops"

events = Table(
    "events",
    metadata,
    Column("id", Uuid, nullable=False),
    Column("occurred", Timestamp, nullable=False),
    Column("event", String(1024), nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("resource", Json, nullable=False),
    Column("related_resource_ids", Json, nullable=False),
    Column("related", Json, nullable=False),
    Column("payload", Json, nullable=False),
    Column("received", Timestamp, nullable=False),
    Column("recorded", Timestamp, nullable=False, server_default=func.now()),
    Column("follows", Uuid, nullable=True),
    Column("created", Timestamp, nullable=False, server_default=func.now()),
    Column("updated", Timestamp, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id", "occurred"),
    Index(None, "occurred", postgresql_with=APPEND_ONLY),
    Index(None, "event", "occurred", postgresql_ops={"event": PATTERN_OPS}),
    Index(None, "resource_id", "occurred", postgresql_ops={"resource_id": PATTERN_OPS}),
    postgresql_partition_by="RANGE (occurred)",
)

# One row per (role, id) of an event's resources; the primary resource has
# role "". The primary key makes a second copy of a resource row impossible,
# whatever path wrote it; it leads with `occurred`, so it is appended to.
# `resource` holds the labels other than prefect.resource.id and
# prefect.resource.role (those are the columns).
# `id` is what Prefect's ORM identifies a row by; nothing looks rows up by it,
# so it has no index.
event_resources = Table(
    "event_resources",
    metadata,
    Column("event_id", Uuid, nullable=False),
    Column("resource_role", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("occurred", Timestamp, nullable=False),
    Column("resource", Json, nullable=False),
    Column("id", Uuid, nullable=False, server_default=RandomUuid()),
    Column("created", Timestamp, nullable=False, server_default=func.now()),
    Column("updated", Timestamp, nullable=False, server_default=func.now()),
    # fillfactor 100 as APPEND_ONLY (set by the migration: SQLAlchemy has no
    # option for it on a primary key).
    PrimaryKeyConstraint("occurred", "event_id", "resource_role", "resource_id"),
    Index(None, "resource_id", "occurred", postgresql_ops={"resource_id": PATTERN_OPS}),
    postgresql_partition_by="RANGE (occurred)",
)

# Where each (group, topic, partition) has got to: the next offset to read.
# Written in the same transaction as the rows, so it is the source of truth.
consumer_offsets = Table(
    "persister_consumer_offsets",
    metadata,
    Column("group_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated", Timestamp, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
)

# Messages that could not be persisted, with where they came from and why.
dead_letters = Table(
    "persister_dead_letters",
    metadata,
    # INTEGER on SQLite: only that type is an auto-incrementing rowid there.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("group_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("timestamp", Timestamp, nullable=True),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=True),
    Column("error_class", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("recorded", Timestamp, nullable=False, server_default=func.now()),
    # When it reached the dead-letter topic; NULL until then (the table is
    # the outbox the topic is fed from, after the batch commits).
    Column("published", Timestamp, nullable=True),
    # When an operator marked it dealt with (`persister dlq resolve`).
    Column("resolved", Timestamp, nullable=True),
    # One dead letter per message, also when a replay reads it again.
    Index(None, "group_id", "topic", "partition", "offset", unique=True),
)
# The outbox the dead-letter sender reads, a page at a time by offset: only
# the rows not yet published, so it stays as small as the backlog.
Index(
    "ix_persister_dead_letters__unpublished",
    dead_letters.c.group_id,
    dead_letters.c.topic,
    dead_letters.c.partition,
    dead_letters.c.offset,
    postgresql_where=dead_letters.c.published.is_(None),
    sqlite_where=dead_letters.c.published.is_(None),
)

# One row per singleton task (the retention trimmer): the replica holding it,
# until when, and an epoch that grows with every change of holder. Work done
# under a lease checks holder and epoch in the same statement, so a former
# holder that was paused past its expiry changes nothing.
leader_leases = Table(
    "persister_leader_leases",
    metadata,
    Column("name", Text, nullable=False),
    Column("holder", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires", Timestamp, nullable=False),
    PrimaryKeyConstraint("name"),
)

# What operators ask of a group's partitions; the workers read it every
# second. `paused`: not fetched (partition -1: every partition of the topic).
# `reload`: raised by a replay that moved a stored offset under live workers;
# the owner of the partition reloads its stored offset when it changes.
partition_controls = Table(
    "persister_partition_controls",
    metadata,
    Column("group_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("reload", BigInteger, nullable=False, server_default="0"),
    Column("updated", Timestamp, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
)

# Message ids a Prefect server's processes published lately (an event's id),
# each with when it was first seen: the Prefect messaging broker's cache, so
# one event sent to two API processes is published once.
seen_messages = Table(
    "persister_seen_messages",
    metadata,
    Column("key", Text, nullable=False),
    Column("seen", Timestamp, nullable=False),
    PrimaryKeyConstraint("key"),
    # Expiry deletes by age.
    Index(None, "seen"),
)
