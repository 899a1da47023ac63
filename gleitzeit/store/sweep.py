"""The reconciler's queries: what is stuck, found from indexed columns by the DB clock.

Finding is read-only; each finding is re-checked by the conditional ``UPDATE`` that
repairs it (``Store.reconcile_run``), so a finding made stale by normal progress or by
another reconciler is harmless.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, exists, func, or_, select

from gleitzeit.states import FINAL_TASK_STATES, RunState, TaskState
from gleitzeit.store.records import StuckRun
from gleitzeit.store.tables import db_now, dispatches, runs, tasks

_WAITING_FOR_WORKER = (TaskState.QUEUED.value, TaskState.RETRYING.value)
_FINAL_TASKS = tuple(sorted(state.value for state in FINAL_TASK_STATES))


def _reconcilable_runs() -> Any:
    """Runs that are running and not set aside until later."""
    return select(runs.c.id).where(
        runs.c.state == RunState.RUNNING.value,
        or_(runs.c.reconcile_after.is_(None), runs.c.reconcile_after <= db_now()),
    )


def _current_dispatch() -> Any:
    """The ledger row of the attempt each waiting task is on."""
    return dispatches.join(
        tasks,
        and_(
            tasks.c.run_id == dispatches.c.run_id,
            tasks.c.task_id == dispatches.c.task_id,
            tasks.c.attempt == dispatches.c.attempt,
        ),
    )


def stalled_condition(stall_timeout: float) -> Any:
    """True for a run in which no task started, finished or held a live lease lately.

    A run's ``updated_at`` moves when a task finishes; a retry waiting out its countdown
    is not a stall.
    """
    since = db_now() - stall_timeout
    active = exists().where(
        tasks.c.run_id == runs.c.id,
        or_(
            tasks.c.started_at >= since,
            and_(tasks.c.state == TaskState.RUNNING.value, tasks.c.lease_until >= db_now()),
        ),
    )
    waiting_out_backoff = exists().where(
        dispatches.c.run_id == runs.c.id,
        dispatches.c.countdown > 0,
        dispatches.c.created_at + dispatches.c.countdown >= since,
    )
    return and_(runs.c.updated_at < since, ~active, ~waiting_out_backoff)


def find_stuck(
    conn: Connection,
    *,
    republish_after: float,
    dispatch_timeout: float,
    stall_timeout: float,
    limit: int,
) -> list[StuckRun]:
    """Runs with something to repair, at most ``limit`` findings of each kind."""
    found: dict[str, StuckRun] = {}

    def stuck(run_id: str) -> StuckRun:
        return found.setdefault(run_id, StuckRun(run_id))

    live = _reconcilable_runs()
    for row in conn.execute(
        select(runs.c.id).where(runs.c.id.in_(live), stalled_condition(stall_timeout)).limit(limit)
    ):
        stuck(row.id).stalled = True
    unfinished = exists().where(tasks.c.run_id == runs.c.id, tasks.c.state.not_in(_FINAL_TASKS))
    for row in conn.execute(select(runs.c.id).where(runs.c.id.in_(live), ~unfinished).limit(limit)):
        stuck(row.id).finished = True
    for row in conn.execute(
        select(tasks.c.run_id, tasks.c.task_id)
        .where(
            tasks.c.state == TaskState.PENDING.value,
            tasks.c.waiting_on == 0,
            tasks.c.run_id.in_(live),
        )
        .limit(limit)
    ):
        stuck(row.run_id).ready.append(row.task_id)
    for row in conn.execute(
        select(tasks.c.run_id, tasks.c.task_id, tasks.c.attempt)
        .where(
            tasks.c.state == TaskState.RUNNING.value,
            tasks.c.lease_until < db_now(),
            tasks.c.run_id.in_(live),
        )
        .limit(limit)
    ):
        stuck(row.run_id).lost.append((row.task_id, row.attempt))
    _find_undelivered(conn, stuck, live, republish_after, dispatch_timeout, limit)
    return list(found.values())


def _find_undelivered(
    conn: Connection,
    stuck: Any,
    live: Any,
    republish_after: float,
    dispatch_timeout: float,
    limit: int,
) -> None:
    """Attempts never published past ``republish_after``, or never started past the timeout."""
    waiting = (dispatches.c.run_id.in_(live), tasks.c.state.in_(_WAITING_FOR_WORKER))
    unpublished = (
        select(dispatches.c.run_id, dispatches.c.task_id, dispatches.c.attempt)
        .select_from(_current_dispatch())
        .where(
            *waiting,
            dispatches.c.published_at.is_(None),
            func.coalesce(dispatches.c.claimed_at, dispatches.c.created_at)
            < db_now() - republish_after,
        )
        .limit(limit)
    )
    for row in conn.execute(unpublished):
        stuck(row.run_id).unpublished.append((row.task_id, row.attempt))
    unstarted = (
        select(dispatches.c.run_id, dispatches.c.task_id, dispatches.c.attempt)
        .select_from(_current_dispatch())
        .where(
            *waiting,
            dispatches.c.published_at.is_not(None),
            dispatches.c.published_at + dispatches.c.countdown < db_now() - dispatch_timeout,
        )
        .limit(limit)
    )
    for row in conn.execute(unstarted):
        stuck(row.run_id).unstarted.append((row.task_id, row.attempt))
