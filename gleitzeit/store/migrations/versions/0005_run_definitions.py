"""a run's graph and inputs move out of its row, into gz_run_definitions

Every finished task updates its run's row. SQLite rewrites a whole row on update, its
overflow pages included, so a run whose graph took 600 kB of JSON rewrote 600 kB per
finished task: a 5,000-task run cost four times as much per task as a 500-task one.
The definition, written at submit and by a retry that changes it, now has a table of its
own and the run's row stays small. (PostgreSQL keeps large values out of line anyway.)

Revision ID: 0005
Revises: 0004
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
        "gz_run_definitions",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("graph", sa.Text(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
    )
    op.execute(
        "INSERT INTO gz_run_definitions (run_id, graph, inputs) "
        "SELECT id, graph, inputs FROM gz_runs"
    )
    with op.batch_alter_table("gz_runs") as batch:
        batch.drop_column("graph")
        batch.drop_column("inputs")


def downgrade() -> None:
    with op.batch_alter_table("gz_runs") as batch:
        batch.add_column(sa.Column("graph", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("inputs", sa.Text(), nullable=False, server_default="{}"))
    op.execute(
        "UPDATE gz_runs SET "
        "graph = (SELECT graph FROM gz_run_definitions d WHERE d.run_id = gz_runs.id), "
        "inputs = (SELECT inputs FROM gz_run_definitions d WHERE d.run_id = gz_runs.id)"
    )
    op.drop_table("gz_run_definitions")
