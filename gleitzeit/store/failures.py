"""A failed attempt, by its task's policy: functions of one transaction.

``Store.record_failure`` runs ``retry`` or ``fail`` in its transaction, and the reconciler
runs them for a lost attempt (:mod:`gleitzeit.store.recovery`). The decisions are the
strategies' own (:mod:`gleitzeit.strategies`, ``on_failure``); here they become conditional
``UPDATE``s. A run that ends failed starts its saga's compensations
(:func:`gleitzeit.store.steps.compensate`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, update

from gleitzeit import codec
from gleitzeit.states import RunState, TaskState, task_moves
from gleitzeit.store import steps
from gleitzeit.store.records import ErrorInfo, Recorded
from gleitzeit.store.tables import db_now, id_list, move, state_in, tasks
from gleitzeit.workflow import ON_FAILURE_BLOCK, ON_FAILURE_SKIP, alternative_of


def retry(
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    error: ErrorInfo,
    retry_in: float,
    *,
    by_task: bool = True,
) -> Recorded:
    """The task gets its next attempt, published ``retry_in`` seconds from now (while the run
    runs). ``by_task``: the task's own error, which uses up one of its retries."""
    row = conn.execute(
        move(run_id, task_id, attempt, TaskState.RETRYING)
        .values(
            attempt=attempt + 1,
            error_type=error.type,
            error_message=error.message,
            lease_until=None,
            failures=tasks.c.failures + int(by_task),
            updated_at=db_now(),
        )
        .returning(tasks.c.options)
    ).one_or_none()
    if row is None:
        return steps.fenced_off(conn, run_id, task_id, attempt, "failed")
    _attempt_failed(conn, run_id, task_id, attempt, error, "retrying", retry_in=retry_in)
    if steps.lock_run(conn, run_id) is not RunState.RUNNING:
        return Recorded(True, [])  # paused: resume dispatches the retry
    following = steps.dispatch_of(run_id, task_id, attempt + 1, row.options, countdown=retry_in)
    steps.write_dispatches(conn, [following])
    return Recorded(True, [following])


def fail(
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    error: ErrorInfo,
    *,
    by_task: bool = True,
) -> Recorded:
    """The task fails for good; its ``on_failure`` decides what happens downstream."""
    row = conn.execute(
        move(run_id, task_id, attempt, TaskState.FAILED)
        .values(
            finished_at=db_now(),
            error_type=error.type,
            error_message=error.message,
            lease_until=None,
            failures=tasks.c.failures + int(by_task),
        )
        .returning(tasks.c.children, tasks.c.options)
    ).one_or_none()
    if row is None:
        return steps.fenced_off(conn, run_id, task_id, attempt, "failed")
    children = codec.loads(row.children)
    options = codec.loads(row.options)
    on_failure = options.get("on_failure", ON_FAILURE_BLOCK)
    alternative = alternative_of(on_failure)
    if options.get("compensates"):
        # a failed compensation is recorded; the next one runs all the same
        _attempt_failed(conn, run_id, task_id, attempt, error, "failed")
        return _go_on(conn, run_id, children, failed=1)
    if on_failure == ON_FAILURE_SKIP:
        _skip_failed(conn, run_id, task_id)
        by = "on_failure=skip: its dependents run and read None"
        _attempt_failed(conn, run_id, task_id, attempt, error, "skipped", by=by)
        return _go_on(conn, run_id, children, failed=0)
    waits = _wake_alternative(conn, run_id, alternative) if alternative else None
    if waits is not None:
        _skip_failed(conn, run_id, task_id)
        by = f"on_failure=alternative: {alternative} runs in its place"
        _attempt_failed(conn, run_id, task_id, attempt, error, "replaced", by=by)
        count = steps.count_finished(conn, run_id, finished=1, failed=0)
        if waits or count.state is not RunState.RUNNING:
            return Recorded(True, [])
        return Recorded(True, steps.claim(conn, run_id, [str(alternative)]))
    _attempt_failed(conn, run_id, task_id, attempt, error, "failed")
    blocked = _block_descendants(conn, run_id, task_id, attempt, children)
    count = steps.count_finished(conn, run_id, finished=1 + blocked, failed=1)
    return Recorded(True, steps.end_if_done(conn, run_id, count))


def _go_on(conn: Connection, run_id: str, children: list[str], *, failed: int) -> Recorded:
    """A task is final and its dependents run all the same."""
    count = steps.count_finished(conn, run_id, finished=1, failed=failed)
    claimed = steps.release(conn, run_id, children, count.state)
    return Recorded(True, claimed + steps.end_if_done(conn, run_id, count))


def _skip_failed(conn: Connection, run_id: str, task_id: str) -> None:
    """A failed task whose ``on_failure`` lets the run go on: skipped, its error kept."""
    conn.execute(
        update(tasks)
        .where(
            tasks.c.run_id == run_id,
            tasks.c.task_id == task_id,
            state_in(task_moves(TaskState.FAILED, to=TaskState.SKIPPED)),
        )
        .values(state=TaskState.SKIPPED.value, updated_at=db_now())
    )


def _wake_alternative(conn: Connection, run_id: str, alternative: str) -> int | None:
    """Count the failure the alternative waits for; return what it still waits for,
    or ``None`` when it can no longer run (blocked or cancelled by then)."""
    return conn.execute(
        update(tasks)
        .where(
            tasks.c.run_id == run_id,
            tasks.c.task_id == alternative,
            state_in([TaskState.PENDING.value]),
        )
        .values(waiting_on=tasks.c.waiting_on - 1)
        .returning(tasks.c.waiting_on)
    ).scalar_one_or_none()


def _attempt_failed(
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    error: ErrorInfo,
    outcome: str,
    **data: Any,
) -> None:
    """Close the attempt's row with its error and record the task's ``outcome`` event."""
    steps.end_attempt(conn, run_id, task_id, attempt, TaskState.FAILED, error)
    steps.event(
        conn,
        run_id,
        f"{task_id}:{attempt}:{outcome}",
        f"task_{outcome}",
        task_id,
        attempt,
        data={"error": f"{error.type}: {error.message}", **data},
    )


def _block_descendants(
    conn: Connection, run_id: str, failed: str, attempt: int, children: list[str]
) -> int:
    """Block every pending task downstream of ``failed``; return how many."""
    count = 0
    frontier = id_list(children)
    while frontier:
        rows = conn.execute(
            update(tasks)
            .where(
                tasks.c.run_id == run_id,
                tasks.c.task_id.in_(frontier),
                state_in(task_moves(TaskState.PENDING, to=TaskState.BLOCKED)),
            )
            .values(state=TaskState.BLOCKED.value, finished_at=db_now(), updated_at=db_now())
            .returning(tasks.c.task_id, tasks.c.children)
        ).all()
        count += len(rows)
        steps.events(
            conn,
            [
                {
                    "run_id": run_id,
                    "key": f"{row.task_id}:blocked-by:{failed}:{attempt}",
                    "type": "task_blocked",
                    "task_id": row.task_id,
                    "attempt": None,
                    "data": codec.dumps({"by": f"{failed} failed", "upstream": failed}),
                }
                for row in rows
            ],
        )
        frontier = id_list(child for row in rows for child in codec.loads(row.children))
    return count
