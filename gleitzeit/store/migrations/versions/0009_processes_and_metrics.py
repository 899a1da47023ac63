"""processes seen (workers, the reconciler) and the index a scrape's cursor reads

``gz_processes``: one row per worker (its Celery hostname) and one for the reconciler,
each with when it was last seen; a worker's row names the tasks it has registered. Health
checks read them, and the metrics exporter reads the reconciler's counts.

``ix_gz_attempts_finished``: the metrics exporter reads the attempts that ended since
its last scrape through it, so that a scrape costs what happened since, never a read of
all history. Partial (ended attempts only): a task's start writes no entry, its end one;
on a worker's store work per task that is some 18 us of SQLite's 350 (a full index: 29).

Revision ID: 0009
Revises: 0008s
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008s"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gz_processes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("tasks", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_gz_processes_kind_seen", "gz_processes", ["kind", "last_seen"])
    # partial: an attempt's start inserts no entry, only its end does
    ended = sa.text("finished_at IS NOT NULL")
    op.create_index(
        "ix_gz_attempts_finished",
        "gz_attempts",
        ["finished_at"],
        sqlite_where=ended,
        postgresql_where=ended,
    )


def downgrade() -> None:
    op.drop_index("ix_gz_attempts_finished", table_name="gz_attempts")
    op.drop_index("ix_gz_processes_kind_seen", table_name="gz_processes")
    op.drop_table("gz_processes")
