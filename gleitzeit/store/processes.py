"""The processes of a deployment as the store last saw them: workers and the reconciler.

A worker registers as it starts (its name, host, pid and task names) and a thread of its
main process marks it seen every ``worker_heartbeat_interval``: never a statement of a
task's own. Each reconciler pass marks the reconciler seen with its counts. Health
checks and metrics read these rows by the database's clock, like every other staleness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gleitzeit import codec
from gleitzeit.store.tables import db_now, processes

WORKER = "worker"
RECONCILER = "reconciler"
#: the name of the reconciler's row: one for the deployment, whichever process ran the pass
RECONCILER_NAME = "reconciler"


@dataclass(frozen=True)
class ProcessRecord:
    """A process as last seen; ``age``: seconds since then, by the database's clock."""

    name: str
    kind: str
    host: str | None
    pid: int | None
    tasks: list[str]
    started_at: float
    last_seen: float
    age: float
    details: dict[str, Any] = field(default_factory=dict)


def _upsert(conn: Connection, row: dict[str, Any], changed: Sequence[str]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(processes).values(**row, started_at=db_now(), last_seen=db_now())
    values = {name: stmt.excluded[name] for name in changed}
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[processes.c.name], set_={**values, "last_seen": db_now()}
        )
    )


def register(
    conn: Connection, name: str, kind: str, host: str | None, pid: int | None, tasks: list[str]
) -> None:
    """Record that the process ``name`` started (again): its row, seen now."""
    row = {"name": name, "kind": kind, "host": host, "pid": pid, "tasks": codec.dumps(tasks)}
    _upsert(conn, row, ["kind", "host", "pid", "tasks", "started_at"])


def seen(conn: Connection, name: str) -> bool:
    """Mark ``name`` seen now; ``False`` when it has no row (registered nowhere yet)."""
    found = conn.execute(
        update(processes).where(processes.c.name == name).values(last_seen=db_now())
    ).rowcount
    return bool(found)


def reconciled(
    conn: Connection, host: str | None, pid: int | None, applied: Mapping[str, int], stuck: int
) -> None:
    """One reconciler pass ended: the reconciler is seen, its repairs are added to its
    counts (which only grow) and ``stuck``, the runs this pass found, is kept."""
    found = conn.execute(
        select(processes.c.details).where(processes.c.name == RECONCILER_NAME).with_for_update()
    ).scalar_one_or_none()
    details = codec.loads(found) if found else {}
    repairs: Counter[str] = Counter(details.get("repairs", {}))
    repairs.update(applied)
    new = {"repairs": dict(repairs), "stuck": stuck, "passes": details.get("passes", 0) + 1}
    row = {
        "name": RECONCILER_NAME,
        "kind": RECONCILER,
        "host": host,
        "pid": pid,
        "tasks": None,
        "details": codec.dumps(new),
    }
    _upsert(conn, row, ["host", "pid", "details"])


def read(conn: Connection, kind: str | None = None) -> list[ProcessRecord]:
    """The processes of ``kind`` (every kind when ``None``), by name."""
    query = select(processes, (db_now() - processes.c.last_seen).label("age")).order_by(
        processes.c.name
    )
    if kind is not None:
        query = query.where(processes.c.kind == kind)
    return [
        ProcessRecord(
            name=row.name,
            kind=row.kind,
            host=row.host,
            pid=row.pid,
            tasks=codec.loads(row.tasks) if row.tasks else [],
            started_at=row.started_at,
            last_seen=row.last_seen,
            age=max(0.0, row.age),
            details=codec.loads(row.details) if row.details else {},
        )
        for row in conn.execute(query)
    ]
