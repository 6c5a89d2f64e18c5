"""ix_persister_dead_letters__unpublished: a partial index of the dead letters
not yet published, which the dead-letter sender reads a page at a time

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_persister_dead_letters__unpublished"
UNPUBLISHED = sa.text("published IS NULL")


def upgrade() -> None:
    # Small: it holds the dead letters waiting for the topic only.
    op.create_index(
        NAME,
        "persister_dead_letters",
        ["group_id", "topic", "partition", "offset"],
        postgresql_where=UNPUBLISHED,
        sqlite_where=UNPUBLISHED,
    )


def downgrade() -> None:
    op.drop_index(NAME, table_name="persister_dead_letters")
