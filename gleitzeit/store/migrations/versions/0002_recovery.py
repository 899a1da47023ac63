"""recovery: lost-attempt counts, attempt holders, set-aside runs, republish claims

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gz_tasks") as batch:
        batch.add_column(sa.Column("lost", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_gz_tasks_state_lease", ["state", "lease_until"])
    with op.batch_alter_table("gz_attempts") as batch:
        batch.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
    with op.batch_alter_table("gz_runs") as batch:
        batch.add_column(
            sa.Column("reconcile_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("reconcile_after", sa.Float(), nullable=True))
    with op.batch_alter_table("gz_dispatches") as batch:
        batch.add_column(sa.Column("claimed_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gz_dispatches") as batch:
        batch.drop_column("claimed_at")
    with op.batch_alter_table("gz_runs") as batch:
        batch.drop_column("reconcile_after")
        batch.drop_column("reconcile_failures")
    with op.batch_alter_table("gz_attempts") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
    with op.batch_alter_table("gz_tasks") as batch:
        batch.drop_index("ix_gz_tasks_state_lease")
        batch.drop_column("lost")
