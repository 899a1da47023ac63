"""Run control in the store: pause, resume, cancel and workflow-level retry.

Each is one transaction (``Store.pause_run`` and its siblings) that first locks the run's
row. Completions, claims and reconciliation of the same run lock that row too before they
claim anything, so a control operation is wholly before or wholly after each of them: a
pause or cancel, once committed, is never followed by a claim made by a transaction that
did not see it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, select, update

from gleitzeit import codec, strategies
from gleitzeit.errors import GraphChanged, RunControlError, RunNotFound
from gleitzeit.states import FINAL_RUN_STATES, RunState, TaskState, task_moves, task_sources
from gleitzeit.store import recovery, steps
from gleitzeit.store.records import Dispatch, PlannedTask, message_id
from gleitzeit.store.tables import (
    attempts,
    db_now,
    dispatches,
    run_definitions,
    runs,
    state_in,
    tasks,
)

_UNFINISHED = (TaskState.PENDING, TaskState.QUEUED, TaskState.RETRYING, TaskState.RUNNING)


@dataclass(frozen=True)
class Controlled:
    """What a control operation did."""

    #: ``False`` when the run was already in the state asked for (nothing changed)
    changed: bool
    #: new attempts to publish (resume, retry)
    dispatches: list[Dispatch] = field(default_factory=list)
    #: message ids of attempts that may be queued or running (cancel revokes them)
    revoke: list[str] = field(default_factory=list)
    #: the tasks a retry runs again
    rerun: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetryRequest:
    """A workflow-level retry, as the client worked it out from the run and the caller."""

    strategy: str
    by: str
    #: tasks whose inputs or definition changed: they run again, with their dependents
    changed: frozenset[str] = frozenset()
    #: new inputs (JSON), or ``None`` to keep the run's
    inputs: str | None = None
    #: the graph hash the client compared against; the retry is refused if it moved since
    expect_graph_hash: str | None = None
    #: a forced new definition: its graph (JSON) and hash, and the changed tasks' rows
    graph: str | None = None
    graph_hash: str | None = None
    updates: list[PlannedTask] = field(default_factory=list)


def _locked(conn: Connection, run_id: str) -> RunState:
    state = steps.lock_run(conn, run_id)
    if state is None:
        raise RunNotFound(run_id)
    return state


def _may(conn: Connection, run_id: str, *, unless: RunState, verb: str) -> bool:
    """Lock the run; ``False`` when it is ``unless`` already; refuse a run that ended."""
    state = _locked(conn, run_id)
    if state is unless:
        return False
    if state in FINAL_RUN_STATES:
        raise RunControlError(f"run {run_id} already ended {state.value}: nothing to {verb}")
    return True


def _control_event(conn: Connection, run_id: str, what: str, **data: Any) -> None:
    # a control operation may be repeated (pause, resume, pause): each gets its own event
    steps.event(conn, run_id, f"run:{what}:{uuid.uuid4()}", f"run_{what}", data=data)


def pause(conn: Connection, run_id: str, by: str) -> Controlled:
    if not _may(conn, run_id, unless=RunState.PAUSED, verb="pause"):
        return Controlled(False)
    conn.execute(update(runs).where(runs.c.id == run_id).values(state=RunState.PAUSED.value))
    _control_event(conn, run_id, "paused", by=by)
    return Controlled(True)


def resume(conn: Connection, run_id: str, by: str) -> Controlled:
    """Run again: claim what became ready while paused and re-dispatch what waited.

    A message delivered while the run was paused did no work, so every task still
    waiting for a worker gets a new attempt (a copy of the old message still in the
    broker is then stale and does nothing).
    """
    if not _may(conn, run_id, unless=RunState.RUNNING, verb="resume"):
        return Controlled(False)
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(state=RunState.RUNNING.value, updated_at=db_now())
    )
    _control_event(conn, run_id, "resumed", by=by)
    waiting = conn.execute(
        select(
            tasks.c.task_id,
            tasks.c.attempt,
            tasks.c.options,
            dispatches.c.attempt.label("sent"),
        )
        .select_from(
            tasks.outerjoin(
                dispatches,
                and_(
                    dispatches.c.run_id == tasks.c.run_id,
                    dispatches.c.task_id == tasks.c.task_id,
                    dispatches.c.attempt == tasks.c.attempt,
                ),
            )
        )
        .where(
            tasks.c.run_id == run_id,
            state_in([TaskState.QUEUED.value, TaskState.RETRYING.value]),
        )
    ).all()
    ready = conn.execute(
        select(tasks.c.task_id).where(
            tasks.c.run_id == run_id,
            state_in([TaskState.PENDING.value]),
            tasks.c.waiting_on == 0,
        )
    ).scalars()
    # claimed after reading what waited, so that the new claims are not re-dispatched
    found = steps.claim(conn, run_id, list(ready))
    unsent = []
    for row in waiting:
        if row.sent is None:
            # a retry decided while paused: its attempt was never dispatched
            unsent.append(steps.dispatch_of(run_id, row.task_id, row.attempt, row.options))
            continue
        found += recovery.redispatch(
            conn,
            run_id,
            row.task_id,
            row.attempt,
            why="resumed",
            reason="the run was resumed; a message delivered while it was paused did no work",
        )
    steps.write_dispatches(conn, unsent)
    return Controlled(True, found + unsent)


def cancel(conn: Connection, run_id: str, by: str) -> Controlled:
    """End the run ``cancelled``: nothing unfinished will start or be recorded."""
    if not _may(conn, run_id, unless=RunState.CANCELLED, verb="cancel"):
        return Controlled(False)
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(
            state=RunState.CANCELLED.value,
            tasks_unfinished=0,
            finished_at=db_now(),
            updated_at=db_now(),
        )
    )
    cancelled = conn.execute(
        update(tasks)
        .where(
            tasks.c.run_id == run_id,
            state_in(task_moves(*_UNFINISHED, to=TaskState.CANCELLED)),
        )
        .values(
            state=TaskState.CANCELLED.value,
            lease_until=None,
            finished_at=db_now(),
            updated_at=db_now(),
        )
        .returning(tasks.c.task_id, tasks.c.attempt)
    ).all()
    conn.execute(
        update(attempts)
        .where(attempts.c.run_id == run_id, attempts.c.state == TaskState.RUNNING.value)
        .values(state=TaskState.CANCELLED.value, finished_at=db_now())
    )
    steps.events(
        conn,
        [
            {
                "run_id": run_id,
                "key": f"{row.task_id}:{row.attempt}:cancelled",
                "type": "task_cancelled",
                "task_id": row.task_id,
                "attempt": row.attempt or None,
                "data": codec.dumps({"by": by}),
            }
            for row in cancelled
        ],
    )
    _control_event(conn, run_id, "cancelled", by=by)
    revoke = [message_id(run_id, row.task_id, row.attempt) for row in cancelled if row.attempt]
    return Controlled(True, revoke=revoke)


def retry(conn: Connection, run_id: str, request: RetryRequest) -> Controlled:
    """Reopen an ended run: the tasks the strategy names run again, as new attempts."""
    state = _locked(conn, run_id)
    if state not in FINAL_RUN_STATES:
        raise RunControlError(
            f"run {run_id} is still {state.value}: wait for it to end, or cancel it, "
            "before retrying it"
        )
    run = conn.execute(select(runs.c.graph_hash, runs.c.retries).where(runs.c.id == run_id)).one()
    if request.expect_graph_hash and run.graph_hash != request.expect_graph_hash:
        raise GraphChanged(f"run {run_id}'s definition changed while retrying it; try again")
    rows = conn.execute(select(*steps.TASK_VIEW_COLUMNS).where(tasks.c.run_id == run_id)).all()
    views = {row.task_id: steps.task_view(row) for row in rows}
    plan = strategies.plan_retry(views, request.strategy, changed=request.changed)
    if plan.drop:
        conn.execute(
            delete(tasks).where(tasks.c.run_id == run_id, tasks.c.task_id.in_(sorted(plan.drop)))
        )
    _apply_definition(conn, run_id, request.updates)
    _skip(conn, run_id, plan.skip)
    _reset(conn, run_id, plan.rerun)
    generation = run.retries + 1
    values: dict[str, Any] = {
        "state": RunState.RUNNING.value,
        "retries": generation,
        "tasks_total": len(rows) - len(plan.drop),
        "tasks_unfinished": len(plan.rerun),
        "tasks_failed": 0,
        "error": None,
        "finished_at": None,
        "reconcile_failures": 0,
        "reconcile_after": None,
        "updated_at": db_now(),
    }
    definition = {}
    if request.inputs is not None:
        definition["inputs"] = request.inputs
    if request.graph is not None and request.graph_hash is not None:
        definition["graph"] = request.graph
        values["graph_hash"] = request.graph_hash
    conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
    if definition:
        conn.execute(
            update(run_definitions).where(run_definitions.c.run_id == run_id).values(**definition)
        )
    steps.event(
        conn,
        run_id,
        f"run:{generation}:retried",
        "run_retried",
        data={
            "by": request.by,
            "strategy": request.strategy,
            "rerun": sorted(plan.rerun),
            "skipped": sorted(plan.skip),
            "changed": sorted(request.changed),
            "new_definition": request.graph is not None,
            "new_inputs": request.inputs is not None,
        },
    )
    if not plan.rerun:
        steps.end_run(conn, run_id, RunState.SUCCEEDED, generation)
        return Controlled(True)
    ready = [task_id for task_id, waits in plan.rerun.items() if waits == 0]
    return Controlled(True, steps.claim(conn, run_id, ready), rerun=sorted(plan.rerun))


def _apply_definition(conn: Connection, run_id: str, updates: list[PlannedTask]) -> None:
    """A forced retry's new definition of the tasks that changed (the shape is the same)."""
    if not updates:
        return
    conn.execute(
        update(tasks)
        .where(tasks.c.run_id == run_id, tasks.c.task_id == bindparam("t"))
        .values(
            name=bindparam("n"),
            params=bindparam("p"),
            sources=bindparam("s"),
            options=bindparam("o"),
        ),
        [
            {
                "t": planned.task_id,
                "n": planned.name,
                "p": planned.params,
                "s": codec.dumps(planned.sources),
                "o": codec.dumps(planned.options),
            }
            for planned in updates
        ],
    )


def _skip(conn: Connection, run_id: str, skip: frozenset[str]) -> None:
    if skip:
        conn.execute(
            update(tasks)
            .where(
                tasks.c.run_id == run_id,
                tasks.c.task_id.in_(sorted(skip)),
                state_in(task_moves(TaskState.FAILED, to=TaskState.SKIPPED)),
            )
            .values(state=TaskState.SKIPPED.value, updated_at=db_now())
        )


def _reset(conn: Connection, run_id: str, rerun: dict[str, int]) -> None:
    """Tasks back to pending, their results and errors cleared; attempts keep counting."""
    if not rerun:
        return
    conn.execute(
        update(tasks)
        .where(
            tasks.c.run_id == run_id,
            tasks.c.task_id == bindparam("t"),
            state_in(task_sources(TaskState.PENDING)),
        )
        .values(
            state=TaskState.PENDING.value,
            waiting_on=bindparam("w"),
            result=None,
            error_type=None,
            error_message=None,
            failures=0,
            lost=0,
            lease_until=None,
            queued_at=None,
            started_at=None,
            finished_at=None,
            updated_at=db_now(),
        ),
        [{"t": task_id, "w": waits} for task_id, waits in rerun.items()],
    )
