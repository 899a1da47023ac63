"""A failed attempt, by its task's policy, and the saga a failed run starts: functions of
one transaction.

``Store.record_failure`` runs ``retry`` or ``fail`` in its transaction, the reconciler runs
them for a lost attempt (:mod:`gleitzeit.store.recovery`), and a run that ends failed starts
its compensations with ``compensate``. The decisions are the strategies' own
(:mod:`gleitzeit.strategies`, ``on_failure``); here they become conditional ``UPDATE``s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from gleitzeit import codec, strategies
from gleitzeit.states import RunState, TaskState, task_moves
from gleitzeit.store import control
from gleitzeit.store.records import Dispatch, ErrorInfo, Recorded, RunCount
from gleitzeit.store.tables import db_now, id_list, move, runs, state_in, tasks
from gleitzeit.workflow import ON_FAILURE_BLOCK, ON_FAILURE_SKIP, alternative_of

if TYPE_CHECKING:
    from gleitzeit.store.store import Store


def retry(
    store: Store,
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
        return store._fenced_off(conn, run_id, task_id, attempt, "failed")
    _attempt_failed(store, conn, run_id, task_id, attempt, error, "retrying", retry_in=retry_in)
    if store._lock_run(conn, run_id) is not RunState.RUNNING:
        return Recorded(True, [])  # paused: resume dispatches the retry
    following = store._dispatch(run_id, task_id, attempt + 1, row.options, countdown=retry_in)
    store._write_dispatches(conn, [following])
    return Recorded(True, [following])


def fail(
    store: Store,
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
        store._finish(run_id, task_id, attempt, TaskState.FAILED)
        .values(
            error_type=error.type,
            error_message=error.message,
            lease_until=None,
            failures=tasks.c.failures + int(by_task),
        )
        .returning(tasks.c.children, tasks.c.options)
    ).one_or_none()
    if row is None:
        return store._fenced_off(conn, run_id, task_id, attempt, "failed")
    children = codec.loads(row.children)
    options = codec.loads(row.options)
    on_failure = options.get("on_failure", ON_FAILURE_BLOCK)
    alternative = alternative_of(on_failure)
    if options.get("compensates"):
        # a failed compensation is recorded; the next one runs all the same
        _attempt_failed(store, conn, run_id, task_id, attempt, error, "failed")
        return _go_on(store, conn, run_id, children, failed=1)
    if on_failure == ON_FAILURE_SKIP:
        _skip_failed(conn, run_id, task_id)
        by = "on_failure=skip: its dependents run and read None"
        _attempt_failed(store, conn, run_id, task_id, attempt, error, "skipped", by=by)
        return _go_on(store, conn, run_id, children, failed=0)
    waits = _wake_alternative(conn, run_id, alternative) if alternative else None
    if waits is not None:
        _skip_failed(conn, run_id, task_id)
        by = f"on_failure=alternative: {alternative} runs in its place"
        _attempt_failed(store, conn, run_id, task_id, attempt, error, "replaced", by=by)
        count = store._count_finished(conn, run_id, finished=1, failed=0)
        if waits or count.state is not RunState.RUNNING:
            return Recorded(True, [])
        return Recorded(True, store._claim(conn, run_id, [str(alternative)]))
    _attempt_failed(store, conn, run_id, task_id, attempt, error, "failed")
    blocked = _block_descendants(store, conn, run_id, task_id, attempt, children)
    count = store._count_finished(conn, run_id, finished=1 + blocked, failed=1)
    return Recorded(True, store._end_if_done(conn, run_id, count))


def _go_on(
    store: Store, conn: Connection, run_id: str, children: list[str], *, failed: int
) -> Recorded:
    """A task is final and its dependents run all the same."""
    count = store._count_finished(conn, run_id, finished=1, failed=failed)
    claimed = store._release(conn, run_id, children, count.state)
    return Recorded(True, claimed + store._end_if_done(conn, run_id, count))


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
    store: Store,
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    error: ErrorInfo,
    outcome: str,
    **data: Any,
) -> None:
    """Close the attempt's row with its error and record the task's ``outcome`` event."""
    store._end_attempt(conn, run_id, task_id, attempt, TaskState.FAILED, error)
    store._event(
        conn,
        run_id,
        f"{task_id}:{attempt}:{outcome}",
        f"task_{outcome}",
        task_id,
        attempt,
        data={"error": f"{error.type}: {error.message}", **data},
    )


def _block_descendants(
    store: Store, conn: Connection, run_id: str, failed: str, attempt: int, children: list[str]
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
        store._events(
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


def compensate(
    store: Store, conn: Connection, run_id: str, count: RunCount
) -> list[Dispatch] | None:
    """Start the saga's compensations, or ``None`` when there is nothing to undo.

    Each compensation is a task of the run that waits for the one before it, and
    runs whether that one succeeded or failed.
    """
    rows = conn.execute(
        select(*control.TASK_VIEW_COLUMNS, tasks.c.params, tasks.c.sources).where(
            tasks.c.run_id == run_id
        )
    ).all()
    by_id = {row.task_id: row for row in rows}
    order = strategies.compensation_order(control.task_view(row) for row in rows)
    if not order:
        return None
    planned = []
    for i, task_id in enumerate(order):
        row = by_id[task_id]
        following = order[i + 1 : i + 2]
        result = f"${{{task_id}.result}}"
        params = {**codec.loads(row.params), strategies.COMPENSATION_RESULT: result}
        planned.append(
            {
                "run_id": run_id,
                "task_id": strategies.compensation_id(task_id),
                "name": codec.loads(row.options)["compensate"],
                "state": TaskState.PENDING.value,
                "attempt": 0,
                "waiting_on": 1 if i else 0,
                "params": codec.dumps(params),
                "sources": codec.dumps(sorted({*codec.loads(row.sources), task_id})),
                "children": codec.dumps([strategies.compensation_id(t) for t in following]),
                "options": codec.dumps({"compensates": task_id}),
                "deliveries": 0,
            }
        )
    conn.execute(insert(tasks).values(updated_at=db_now()), planned)
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(
            tasks_total=runs.c.tasks_total + len(planned),
            tasks_unfinished=runs.c.tasks_unfinished + len(planned),
        )
    )
    store._event(
        conn,
        run_id,
        f"run:{count.retries}:compensating",
        "run_compensating",
        data={"by": "the run failed", "order": order},
    )
    if count.state is not RunState.RUNNING:
        return []
    return store._claim(conn, run_id, [strategies.compensation_id(order[0])])
