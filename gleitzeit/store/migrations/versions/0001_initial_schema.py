"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gz_attempts",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("error_type", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "task_id", "attempt"),
    )
    op.create_table(
        "gz_dispatches",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("queue", sa.String(length=255), nullable=True),
        sa.Column("countdown", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("published_at", sa.Float(), nullable=True),
        sa.Column("publish_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "task_id", "attempt"),
        sa.UniqueConstraint("message_id"),
    )
    with op.batch_alter_table("gz_dispatches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_gz_dispatches_unpublished", ["published_at", "created_at"], unique=False
        )

    op.create_table(
        "gz_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "key", name="uq_gz_events_run_key"),
    )
    with op.batch_alter_table("gz_events", schema=None) as batch_op:
        batch_op.create_index("ix_gz_events_run_id", ["run_id", "id"], unique=False)

    op.create_table(
        "gz_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("graph", sa.Text(), nullable=False),
        sa.Column("graph_hash", sa.String(length=64), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("inputs_hash", sa.String(length=64), nullable=False),
        sa.Column("tasks_total", sa.Integer(), nullable=False),
        sa.Column("tasks_unfinished", sa.Integer(), nullable=False),
        sa.Column("tasks_failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("gz_runs", schema=None) as batch_op:
        batch_op.create_index("ix_gz_runs_name_created", ["name", "created_at"], unique=False)
        batch_op.create_index("ix_gz_runs_state_updated", ["state", "updated_at"], unique=False)

    op.create_table(
        "gz_tasks",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("waiting_on", sa.Integer(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("sources", sa.Text(), nullable=False),
        sa.Column("children", sa.Text(), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("queued_at", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "task_id"),
    )
    with op.batch_alter_table("gz_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_gz_tasks_state_updated", ["state", "updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gz_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_gz_tasks_state_updated")

    op.drop_table("gz_tasks")
    with op.batch_alter_table("gz_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_gz_runs_state_updated")
        batch_op.drop_index("ix_gz_runs_name_created")

    op.drop_table("gz_runs")
    with op.batch_alter_table("gz_events", schema=None) as batch_op:
        batch_op.drop_index("ix_gz_events_run_id")

    op.drop_table("gz_events")
    with op.batch_alter_table("gz_dispatches", schema=None) as batch_op:
        batch_op.drop_index("ix_gz_dispatches_unpublished")

    op.drop_table("gz_dispatches")
    op.drop_table("gz_attempts")
