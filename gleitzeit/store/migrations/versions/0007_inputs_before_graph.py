"""a run's inputs come before its graph in gz_run_definitions (SQLite)

Every attempt's start reads its run's inputs. SQLite keeps a row's columns in order and
a large value in a chain of overflow pages; to reach a column after the graph it follows
the graph's whole chain, page by page. A 5,000-task run's graph fills some 270 pages:
each start read them all (again after every other process's write, which empties a
connection's page cache), and on two worker processes the store's work per task cost two
fifths more at 5,000 tasks than at 500. With the inputs first, a start reads one page.
PostgreSQL keeps large values out of line and reads a column without the others: its
table stays as it is.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _order(*columns: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "gz_run_definitions", recreate="always", partial_reordering=[columns]
    ):
        pass


def upgrade() -> None:
    _order("run_id", "inputs", "graph")


def downgrade() -> None:
    _order("run_id", "graph", "inputs")
