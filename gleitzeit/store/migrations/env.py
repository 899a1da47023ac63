"""Alembic environment: runs migrations on the engine gleitzeit hands over.

On PostgreSQL an advisory lock serialises concurrent upgrades; on SQLite the
``BEGIN IMMEDIATE`` of gleitzeit's engine does the same.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from gleitzeit.store.tables import metadata

_ADVISORY_LOCK = 7_146_312_201


def run_migrations() -> None:
    engine: Engine = context.config.attributes["engine"]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()


run_migrations()
