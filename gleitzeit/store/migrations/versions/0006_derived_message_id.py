"""the dispatch ledger no longer stores message ids: they derive from the attempt's key

A message id is ``uuid5(run/task/attempt)``, computed wherever it is needed; storing it
again cost a unique index entry per dispatch, and kept the claim from being written in
SQL alone (PostgreSQL has no SHA-1 without an extension), which the one-statement
progress of a task on PostgreSQL needs.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gz_dispatches") as batch:
        batch.drop_column("message_id")


def downgrade() -> None:
    from gleitzeit.store.records import message_id

    with op.batch_alter_table("gz_dispatches") as batch:
        batch.add_column(sa.Column("message_id", sa.String(36), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT run_id, task_id, attempt FROM gz_dispatches")).all()
    if rows:
        conn.execute(
            sa.text(
                "UPDATE gz_dispatches SET message_id = :m "
                "WHERE run_id = :r AND task_id = :t AND attempt = :a"
            ),
            [{"m": message_id(r, t, a), "r": r, "t": t, "a": a} for r, t, a in rows],
        )
    with op.batch_alter_table("gz_dispatches") as batch:
        batch.alter_column("message_id", existing_type=sa.String(36), nullable=False)
        batch.create_unique_constraint("gz_dispatches_message_id_key", ["message_id"])
