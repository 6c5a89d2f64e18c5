"""Prefect's storage shape: events.created/updated; event_resources.id/created/updated;
event_resources.resource without prefect.resource.id and prefect.resource.role

Existing rows keep their data; their new `created` and `updated` are the time
of the migration. On PostgreSQL event_resources is rewritten once (one ALTER
TABLE adds the columns and drops the two labels), events not at all (its new
columns have a constant default). On SQLite both tables are copied.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from schemas.sharing import owns_event_tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)

# A random version 4 UUID per row, as the 32 hex digits SQLAlchemy's Uuid is
# stored as on SQLite.
SQLITE_RANDOM_UUID = (
    "lower(hex(randomblob(4)) || hex(randomblob(2)) || '4' || substr(hex(randomblob(2)), 2)"
    " || substr('89AB', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2)"
    " || hex(randomblob(6)))"
)


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column(name, Timestamp, server_default=sa.func.now(), nullable=False)
        for name in ("created", "updated")
    ]


def upgrade() -> None:
    if not owns_event_tables():
        return  # Prefect's migrations own events and event_resources
    if op.get_bind().dialect.name == "postgresql":
        for column in _timestamps():
            op.add_column("events", column)
        # One statement, so the table is rewritten once.
        op.execute(
            "ALTER TABLE event_resources"
            " ADD COLUMN id uuid DEFAULT gen_random_uuid() NOT NULL,"
            " ADD COLUMN created timestamp with time zone DEFAULT now() NOT NULL,"
            " ADD COLUMN updated timestamp with time zone DEFAULT now() NOT NULL,"
            " ALTER COLUMN resource TYPE jsonb"
            " USING resource - 'prefect.resource.id' - 'prefect.resource.role'"
        )
        return
    # SQLite cannot add a column with a non-constant default: copy the tables.
    with op.batch_alter_table("events", recreate="always") as batch:
        for column in _timestamps():
            batch.add_column(column)
    with op.batch_alter_table("event_resources", recreate="always") as batch:
        batch.add_column(
            sa.Column("id", sa.Uuid(), server_default=sa.text(SQLITE_RANDOM_UUID), nullable=False)
        )
        for column in _timestamps():
            batch.add_column(column)
    op.execute(
        "UPDATE event_resources SET resource = json_remove(resource,"
        """ '$."prefect.resource.id"', '$."prefect.resource.role"')"""
    )


def downgrade() -> None:
    """Puts the labels back from the columns: prefect.resource.id on every
    row, prefect.resource.role on related resources (role not "")."""
    if not owns_event_tables():
        return  # Prefect's migrations own events and event_resources
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE event_resources"
            " DROP COLUMN id, DROP COLUMN created, DROP COLUMN updated,"
            " ALTER COLUMN resource TYPE jsonb USING resource"
            " || jsonb_build_object('prefect.resource.id', resource_id)"
            " || CASE WHEN resource_role = '' THEN '{}'::jsonb"
            " ELSE jsonb_build_object('prefect.resource.role', resource_role) END"
        )
    else:
        op.execute(
            """UPDATE event_resources SET resource = json_set(resource,"""
            """ '$."prefect.resource.id"', resource_id)"""
        )
        op.execute(
            """UPDATE event_resources SET resource = json_set(resource,"""
            """ '$."prefect.resource.role"', resource_role) WHERE resource_role != ''"""
        )
        with op.batch_alter_table("event_resources") as batch:
            for name in ("id", "created", "updated"):
                batch.drop_column(name)
    with op.batch_alter_table("events") as batch:
        for name in ("created", "updated"):
            batch.drop_column(name)
