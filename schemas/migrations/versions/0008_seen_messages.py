"""persister_seen_messages: message ids a Prefect server published lately, so
its processes publish each once (worker.prefect_messaging's cache)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "persister_seen_messages",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_persister_seen_messages"),
    )
    op.create_index("ix_persister_seen_messages__seen", "persister_seen_messages", ["seen"])


def downgrade() -> None:
    op.drop_table("persister_seen_messages")
