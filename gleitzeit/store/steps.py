"""The steps the store's transactions are made of, each on the transaction's connection.

A success, a failure, a repair and a control operation share them: claim ready tasks into
the dispatch ledger, close an attempt, count finished tasks and end the run (a failed
run first runs its saga's compensations), record the history's events. Each step is a
conditional statement; the caller's transaction makes them one change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from gleitzeit import codec, strategies
from gleitzeit.states import RunState, TaskState, run_sources
from gleitzeit.store import statements
from gleitzeit.store.records import Dispatch, ErrorInfo, Recorded, RunCount
from gleitzeit.store.tables import db_now, id_list, runs, tasks
from gleitzeit.workflow import ON_FAILURE_BLOCK

# -- claims and the dispatch ledger --------------------------------------------------------


def claim(
    conn: Connection,
    run_id: str,
    task_ids: Sequence[str],
    *,
    why: Callable[[Dispatch], dict[str, Any]] | None = None,
) -> list[Dispatch]:
    """Claim the tasks of ``task_ids`` that are pending with nothing to wait on.

    ``why``: the event row of each claim, written before its ledger row (its
    ``task_queued``), so that the history tells why before what.
    """
    if not task_ids:
        return []
    claimed = conn.execute(statements.CLAIM, {"r": run_id, "ids": id_list(task_ids)}).all()
    found = dispatches_of(run_id, claimed)
    if why is not None:
        events(conn, [why(d) for d in found])
    write_dispatches(conn, found)
    return found


def dispatches_of(run_id: str, claimed: Sequence[Any]) -> list[Dispatch]:
    """The messages of claimed attempts: rows with ``task_id``, ``attempt`` and ``options``
    (a row whose ``task_id`` is NULL, from an outer join that claimed nothing, is none)."""
    return [
        dispatch_of(run_id, row.task_id, row.attempt, row.options)
        for row in claimed
        if row.task_id is not None
    ]


def dispatch_of(
    run_id: str, task_id: str, attempt: int, options: str, countdown: float = 0.0
) -> Dispatch:
    """The message of an attempt, by its task's stored ``options`` (JSON)."""
    opts = codec.loads(options)
    return Dispatch(
        run_id=run_id,
        task_id=task_id,
        attempt=attempt,
        queue=opts.get("queue"),
        priority=opts.get("priority"),
        timeout=opts.get("timeout"),
        countdown=countdown,
    )


def write_dispatches(conn: Connection, found: Sequence[Dispatch]) -> None:
    """The ledger rows of attempts about to be published."""
    if not found:
        return
    rows = [
        {
            "run_id": d.run_id,
            "task_id": d.task_id,
            "attempt": d.attempt,
            "queue": d.queue,
            "countdown": d.countdown,
            "publish_count": 0,
        }
        for d in found
    ]
    # the primary key (run, task, attempt) makes a second dispatch of an attempt fail;
    # the row is also the attempt's task_queued event in the history (reads.get_events)
    conn.execute(statements.INSERT_DISPATCHES, rows)


def release(conn: Connection, run_id: str, children: list[str], state: RunState) -> list[Dispatch]:
    """One parent of each child is done; claim those with none left while the run runs."""
    if not children:
        return []
    released = conn.execute(statements.RELEASE, {"r": run_id, "ids": children}).all()
    if state is not RunState.RUNNING:
        return []  # paused: resume claims what is ready
    # only the decrement that reached zero may claim; a join's other parents skip it
    return claim(conn, run_id, [row.task_id for row in released if row.waiting_on == 0])


# -- attempts ---------------------------------------------------------------------------


def end_attempt(
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    state: TaskState,
    error: ErrorInfo | None = None,
) -> None:
    """Close the attempt's row in ``state``, with its error."""
    conn.execute(
        statements.END_ATTEMPT,
        {
            "r": run_id,
            "t": task_id,
            "a": attempt,
            "state": state.value,
            "etype": error.type if error else None,
            "emessage": error.message if error else None,
            "etrace": error.traceback if error else None,
        },
    )


def fenced_off(conn: Connection, run_id: str, task_id: str, attempt: int, how: str) -> Recorded:
    """A late or duplicate outcome: kept in the history, never applied."""
    event(
        conn,
        run_id,
        f"{task_id}:{attempt}:ignored-{how}",
        "outcome_ignored",
        task_id,
        attempt,
        data={"outcome": how},
    )
    return Recorded(False)


# -- the run ----------------------------------------------------------------------------


def lock_run(conn: Connection, run_id: str) -> RunState | None:
    """The run's state, its row locked to the end of the transaction (PostgreSQL; a
    SQLite write transaction holds the whole database), so that a pause, cancel or retry
    is wholly before or wholly after this transaction."""
    state = conn.execute(
        select(runs.c.state).where(runs.c.id == run_id).with_for_update()
    ).scalar_one_or_none()
    return None if state is None else RunState(state)


def count_finished(conn: Connection, run_id: str, *, finished: int, failed: int) -> RunCount:
    """Count tasks that reached a final state. The update locks the run's row, so a
    pause or cancel is wholly before or after the claims this transaction makes next."""
    row = conn.execute(
        statements.COUNT_FINISHED, {"r": run_id, "finished": finished, "failed": failed}
    ).one()
    return RunCount(RunState(row.state), row.tasks_unfinished, row.tasks_failed, row.retries)


def end_if_done(
    conn: Connection, run_id: str, count: RunCount, *, why: dict[str, Any] | None = None
) -> list[Dispatch]:
    """End the run when no task is left; a failed one first runs its compensations.

    ``why``: who ended it and why, for the event (``by`` and ``reason``), when not its
    last task's outcome (the reconciler found it ended and not marked).
    """
    if count.unfinished > 0:
        return []
    if count.failed:
        compensating = compensate(conn, run_id, count, **(why or {}))
        if compensating is not None:
            return compensating
    final = RunState.FAILED if count.failed else RunState.SUCCEEDED
    end_run(conn, run_id, final, count.retries, data=why)
    return []


def end_run(
    conn: Connection,
    run_id: str,
    final: RunState,
    retries: int,
    *,
    data: dict[str, Any] | None = None,
) -> bool:
    """End the run ``final``; ``False`` when it could not move there (ended already)."""
    ended = conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.state.in_(run_sources(final)))
        .values(state=final.value, finished_at=db_now())
    ).rowcount
    if ended:
        event(conn, run_id, f"run:{retries}:{final.value}", f"run_{final.value}", data=data)
    return bool(ended)


def compensate(
    conn: Connection,
    run_id: str,
    count: RunCount,
    *,
    by: str = "the run failed",
    reason: str | None = None,
) -> list[Dispatch] | None:
    """Start the saga's compensations, or ``None`` when there is nothing to undo.

    Each compensation is a task of the run that waits for the one before it, and
    runs whether that one succeeded or failed. ``by`` and ``reason``: who failed the run
    and why, when not its tasks (the reconciler found it stalled).
    """
    rows = conn.execute(
        select(*TASK_VIEW_COLUMNS, tasks.c.params, tasks.c.sources).where(tasks.c.run_id == run_id)
    ).all()
    by_id = {row.task_id: row for row in rows}
    order = strategies.compensation_order(task_view(row) for row in rows)
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
    event(
        conn,
        run_id,
        f"run:{count.retries}:compensating",
        "run_compensating",
        data={"by": by, "order": order, **({"reason": reason} if reason else {})},
    )
    if count.state is not RunState.RUNNING:
        return []
    return claim(conn, run_id, [strategies.compensation_id(order[0])])


#: the columns :func:`task_view` reads
TASK_VIEW_COLUMNS = (
    tasks.c.task_id,
    tasks.c.state,
    tasks.c.children,
    tasks.c.options,
    tasks.c.error_type,
    tasks.c.finished_at,
)


def task_view(row: Any) -> strategies.TaskView:
    """A stored task (selected with :data:`TASK_VIEW_COLUMNS`) as the strategies see it."""
    options = codec.loads(row.options)
    return strategies.TaskView(
        task_id=row.task_id,
        state=TaskState(row.state),
        children=tuple(codec.loads(row.children)),
        on_failure=options.get("on_failure", ON_FAILURE_BLOCK),
        compensate=options.get("compensate"),
        stands_in_for=options.get("stands_in_for"),
        compensates=options.get("compensates"),
        has_error=row.error_type is not None,
        finished_at=row.finished_at,
    )


# -- history ----------------------------------------------------------------------------


def event(
    conn: Connection,
    run_id: str,
    key: str,
    type_: str,
    task_id: str | None = None,
    attempt: int | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> None:
    """One event of the run's history; ``key`` makes a repeated one a no-op."""
    events(
        conn,
        [
            {
                "run_id": run_id,
                "key": key,
                "type": type_,
                "task_id": task_id,
                "attempt": attempt,
                "data": codec.dumps(data) if data else None,
            }
        ],
    )


def events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Events of the run's history (rows of ``gz_events``)."""
    if not rows:
        return
    conn.execute(statements.insert_events(conn), list(rows))
