"""the run row's per-task update no longer touches an index

Every finished task updates its run's row (the unfinished and failed counts, ``updated_at``).
With ``updated_at`` in ``ix_gz_runs_state_updated`` no such update could be a heap-only
(HOT) update on PostgreSQL: each one added an entry to every index of the table and left a
dead row version behind. The reconciler finds running runs by ``state`` alone (there are
few), so the index keeps ``state`` only.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_gz_runs_state_updated", table_name="gz_runs")
    op.create_index("ix_gz_runs_state", "gz_runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_gz_runs_state", table_name="gz_runs")
    op.create_index("ix_gz_runs_state_updated", "gz_runs", ["state", "updated_at"])
