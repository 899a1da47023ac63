"""The metrics exporter's reads: counts from indexes, and rows recorded in a window.

Every query here reads an index range: the runs and tasks in a state that is not final
(``ix_gz_runs_state``, ``ix_gz_tasks_state_updated``), the history's events after an id
(the primary key), the attempts that ended in a window of time
(``ix_gz_attempts_finished``), the ledger rows published in one
(``ix_gz_dispatches_unpublished``). A scrape so costs what is running and what happened
since the last one, never a read of all history. Only :func:`totals`, which seeds the
exporter's counters once as it starts, reads everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select

from gleitzeit.states import FINAL_RUN_STATES, FINAL_TASK_STATES, RunState, TaskState
from gleitzeit.store.tables import attempts, db_now, dispatches, events, runs, tasks

ACTIVE_RUN_STATES = tuple(state.value for state in RunState if state not in FINAL_RUN_STATES)
ACTIVE_TASK_STATES = tuple(state.value for state in TaskState if state not in FINAL_TASK_STATES)


@dataclass(frozen=True)
class Window:
    """The rows recorded after the exporter's cursors and up to ``until`` (a time)."""

    events: list[Any]
    attempts: list[Any]
    dispatches: list[Any]


def now(conn: Connection) -> float:
    """The database's clock."""
    return float(conn.execute(select(db_now())).scalar_one())


def active_runs(conn: Connection) -> list[Any]:
    """``(name, state, n)``: runs not ended, by workflow name and state."""
    return list(
        conn.execute(
            select(runs.c.name, runs.c.state, func.count())
            .where(runs.c.state.in_(ACTIVE_RUN_STATES))
            .group_by(runs.c.name, runs.c.state)
        )
    )


def active_tasks(conn: Connection) -> list[Any]:
    """``(state, n)``: tasks in a state that is not final, counted in the state's index."""
    return list(
        conn.execute(
            select(tasks.c.state, func.count())
            .where(tasks.c.state.in_(ACTIVE_TASK_STATES))
            .group_by(tasks.c.state)
        )
    )


def unpublished(conn: Connection) -> int:
    """Ledger rows not (yet) handed to the broker."""
    return int(
        conn.execute(
            select(func.count()).select_from(dispatches).where(dispatches.c.published_at.is_(None))
        ).scalar_one()
    )


def last_event_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())


def _events_after(conn: Connection, after: int, limit: int) -> list[Any]:
    return list(
        conn.execute(
            select(events.c.id, events.c.type, events.c.created_at, runs.c.name)
            .select_from(events.outerjoin(runs, runs.c.id == events.c.run_id))
            .where(events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        )
    )


def _attempts_ended(conn: Connection, after: float, until: float, limit: int) -> list[Any]:
    keyed = and_(tasks.c.run_id == attempts.c.run_id, tasks.c.task_id == attempts.c.task_id)
    ledger = and_(
        dispatches.c.run_id == attempts.c.run_id,
        dispatches.c.task_id == attempts.c.task_id,
        dispatches.c.attempt == attempts.c.attempt,
    )
    return list(
        conn.execute(
            select(
                attempts.c.state,
                attempts.c.started_at,
                attempts.c.finished_at,
                tasks.c.name,
                dispatches.c.published_at,
            )
            .select_from(attempts.join(tasks, keyed).outerjoin(dispatches, ledger))
            .where(attempts.c.finished_at > after, attempts.c.finished_at <= until)
            .order_by(attempts.c.finished_at)
            .limit(limit)
        )
    )


def _published(conn: Connection, after: float, until: float, limit: int) -> list[Any]:
    return list(
        conn.execute(
            select(
                dispatches.c.attempt,
                dispatches.c.publish_count,
                dispatches.c.created_at,
                dispatches.c.published_at,
            )
            .where(dispatches.c.published_at > after, dispatches.c.published_at <= until)
            .order_by(dispatches.c.published_at)
            .limit(limit)
        )
    )


def window(
    conn: Connection,
    *,
    event_after: int,
    ended_after: float,
    published_after: float,
    until: float,
    limit: int,
) -> Window:
    """What was recorded after each cursor, up to ``limit`` rows of each kind."""
    return Window(
        events=_events_after(conn, event_after, limit),
        attempts=_attempts_ended(conn, ended_after, until, limit),
        dispatches=_published(conn, published_after, until, limit),
    )


# -- the seed: read once, as an exporter starts --------------------------------------------


@dataclass(frozen=True)
class Totals:
    """Everything counted up to a cursor: events by type and workflow name, ended
    attempts by task name and state, first publishes and publishes again."""

    events: Sequence[Any]
    attempts: Sequence[Any]
    published: int
    republished: int


def totals(conn: Connection, *, event_until: int, until: float) -> Totals:
    """All history up to the cursors (a read of every row: once per exporter)."""
    by_event = conn.execute(
        select(events.c.type, runs.c.name, func.count())
        .select_from(events.outerjoin(runs, runs.c.id == events.c.run_id))
        .where(events.c.id <= event_until)
        .group_by(events.c.type, runs.c.name)
    ).all()
    by_attempt = conn.execute(
        select(tasks.c.name, attempts.c.state, func.count())
        .select_from(
            attempts.join(
                tasks,
                and_(tasks.c.run_id == attempts.c.run_id, tasks.c.task_id == attempts.c.task_id),
            )
        )
        .where(attempts.c.finished_at <= until)
        .group_by(tasks.c.name, attempts.c.state)
    ).all()
    published, republished = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(dispatches.c.publish_count - 1), 0),
        ).where(dispatches.c.published_at <= until)
    ).one()
    return Totals(by_event, by_attempt, int(published), int(republished))
