"""Table definitions (SQLAlchemy Core). Migrations in `schemas/migrations` create
them; nothing creates tables at write time.

Columns follow Prefect's `events` and `event_resources` tables so Prefect-style
readers work unchanged. Each index exists for a named query:

- ``ix_events__occurred``: time-range reads ("events since T") and the retention
  trimmer's ``occurred < cutoff`` batches.
- ``ix_events__event_occurred``: reads by event type over time, and per-type
  retention overrides.
- ``ix_events__resource_id_occurred``: "events of this resource", newest first.
- ``ix_event_resources__resource_id_occurred``: events that mention a resource
  in any role (the related-resource lookup).
- ``ix_event_resources__occurred``: the trimmer's range deletes on resource rows.
- ``ix_dead_letters__group_id_topic_partition_offset`` (unique): finding a dead
  letter by where it came from, and writing each one once.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
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
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

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

events = Table(
    "events",
    metadata,
    Column("id", Uuid, primary_key=True),
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
    Index(None, "occurred"),
    Index(None, "event", "occurred"),
    Index(None, "resource_id", "occurred"),
)

# The primary key makes a second copy of a resource row impossible, whatever
# path wrote it; the primary resource has role "".
event_resources = Table(
    "event_resources",
    metadata,
    Column("event_id", Uuid, nullable=False),
    Column("resource_role", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("occurred", Timestamp, nullable=False),
    Column("resource", Json, nullable=False),
    PrimaryKeyConstraint("event_id", "resource_role", "resource_id"),
    Index(None, "resource_id", "occurred"),
    Index(None, "occurred"),
)

# Where each (group, topic, partition) has got to: the next offset to read.
# Written in the same transaction as the rows, so it is the source of truth.
consumer_offsets = Table(
    "consumer_offsets",
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
    "dead_letters",
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
    # One dead letter per message, also when a replay reads it again.
    Index(None, "group_id", "topic", "partition", "offset", unique=True),
)

# One row per singleton task (the retention trimmer): the replica holding it,
# until when, and an epoch that grows with every change of holder. Work done
# under a lease checks holder and epoch in the same statement, so a former
# holder that was paused past its expiry changes nothing.
leader_leases = Table(
    "leader_leases",
    metadata,
    Column("name", Text, nullable=False),
    Column("holder", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires", Timestamp, nullable=False),
    PrimaryKeyConstraint("name"),
)
