"""persister_partition_controls: what operators ask of a group's partitions (paused, reload)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "persister_partition_controls",
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("reload", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column(
            "updated", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint(
            "group_id", "topic", "partition", name="pk_persister_partition_controls"
        ),
    )


def downgrade() -> None:
    op.drop_table("persister_partition_controls")
