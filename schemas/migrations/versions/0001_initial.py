"""events, event_resources (unless Prefect's migrations make them), persister_consumer_offsets,
persister_dead_letters

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schemas.sharing import owns_event_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    if owns_event_tables():
        _events()
        _event_resources()
    _consumer_offsets()
    _dead_letters()


def _events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred", Timestamp, nullable=False),
        sa.Column("event", sa.String(1024), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=False),
        sa.Column("resource", Json, nullable=False),
        sa.Column("related_resource_ids", Json, nullable=False),
        sa.Column("related", Json, nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("received", Timestamp, nullable=False),
        sa.Column("recorded", Timestamp, server_default=sa.func.now(), nullable=False),
        sa.Column("follows", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events__occurred", "events", ["occurred"])
    op.create_index("ix_events__event_occurred", "events", ["event", "occurred"])
    op.create_index("ix_events__resource_id_occurred", "events", ["resource_id", "occurred"])


def _event_resources() -> None:
    op.create_table(
        "event_resources",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("resource_role", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=False),
        sa.Column("occurred", Timestamp, nullable=False),
        sa.Column("resource", Json, nullable=False),
        sa.PrimaryKeyConstraint(
            "event_id", "resource_role", "resource_id", name="pk_event_resources"
        ),
    )
    op.create_index(
        "ix_event_resources__resource_id_occurred",
        "event_resources",
        ["resource_id", "occurred"],
    )
    op.create_index("ix_event_resources__occurred", "event_resources", ["occurred"])


def _consumer_offsets() -> None:
    op.create_table(
        "persister_consumer_offsets",
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated", Timestamp, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint(
            "group_id", "topic", "partition", name="pk_persister_consumer_offsets"
        ),
    )


def _dead_letters() -> None:
    op.create_table(
        "persister_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", Timestamp, nullable=True),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("error_class", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("recorded", Timestamp, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_persister_dead_letters"),
    )
    op.create_index(
        "ix_persister_dead_letters__group_id_topic_partition_offset",
        "persister_dead_letters",
        ["group_id", "topic", "partition", "offset"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_table("persister_dead_letters")
    op.drop_table("persister_consumer_offsets")
    if owns_event_tables():
        op.drop_table("event_resources")
        op.drop_table("events")
