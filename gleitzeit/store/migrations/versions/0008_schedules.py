"""schedules: gz_schedules

A schedule is a workflow in its data form (tasks by registered name), a cron expression
and a time zone, and the earliest slot not fired yet. Beat's tick finds due schedules
through ``ix_gz_schedules_due`` (paused, next_slot): with nothing due, one index search.

Revision ID: 0008s
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008s"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gz_schedules",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("cron", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("graph", sa.Text(), nullable=False),
        sa.Column("graph_hash", sa.String(64), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("inputs_hash", sa.String(64), nullable=False),
        sa.Column("catchup", sa.Boolean(), nullable=False),
        sa.Column("key_prefix", sa.String(200), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_slot", sa.Float(), nullable=False),
        sa.Column("last_slot", sa.Float(), nullable=True),
        sa.Column("last_run_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_gz_schedules_due", "gz_schedules", ["paused", "next_slot"])


def downgrade() -> None:
    op.drop_index("ix_gz_schedules_due", table_name="gz_schedules")
    op.drop_table("gz_schedules")
