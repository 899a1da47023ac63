"""failure strategies and workflow retries: per-task failure counts, per-run retry counts

``gz_tasks.failures``: attempts that failed by the task's own error, counted against its
retries (a re-dispatched attempt no longer uses one up); ``gz_runs.retries``: workflow-level
retries of the run.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gz_tasks") as batch:
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("gz_runs") as batch:
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("gz_runs") as batch:
        batch.drop_column("retries")
    with op.batch_alter_table("gz_tasks") as batch:
        batch.drop_column("failures")
