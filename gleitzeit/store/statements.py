"""The statements of a task's normal progress, built once with bound parameters.

Every attempt runs these: claim, start, finish, count, release, publish. Building a
SQLAlchemy statement anew for each call costs more than running it (the expression
tree, then its cache key, for every execution); a statement built once at import keeps
its memoized cache key, so executing it is a compiled-cache hit and a parameter dict.
The rarer paths (failures, recovery, run control) build theirs where they are used.

Bound parameter names are short and never a column's name: ``update()`` would read a
column-named parameter as a value to set.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gleitzeit.states import RunState, TaskState, task_moves, task_sources
from gleitzeit.store.tables import (
    attempt_key,
    attempts,
    db_now,
    dispatches,
    events,
    on_attempt,
    run_definitions,
    runs,
    state_in,
    tasks,
)

_RUN: BindParameter[str] = bindparam("r")
_TASK: BindParameter[str] = bindparam("t")
_ATTEMPT: BindParameter[int] = bindparam("a")
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)


def _on_attempt(new: TaskState) -> list[Any]:
    """The task is on attempt ``:a`` (the fencing token) in a state that may move to ``new``."""
    return on_attempt(_RUN, _TASK, _ATTEMPT, task_sources(new))


#: pending tasks of ``ids`` with nothing left to wait on become queued on a new attempt
CLAIM = (
    update(tasks)
    .where(
        tasks.c.run_id == _RUN,
        tasks.c.task_id.in_(_IDS),
        state_in(task_moves(TaskState.PENDING, to=TaskState.QUEUED)),
        tasks.c.waiting_on == 0,
    )
    .values(
        state=TaskState.QUEUED.value,
        attempt=tasks.c.attempt + 1,
        queued_at=db_now(),
        updated_at=db_now(),
    )
    .returning(tasks.c.task_id, tasks.c.attempt, tasks.c.options)
)

#: one row per claimed attempt: its primary key makes a second dispatch of it fail
INSERT_DISPATCHES = insert(dispatches).values(created_at=db_now())

MARK_PUBLISHED = (
    update(dispatches)
    .where(*attempt_key(dispatches, _RUN, _TASK, _ATTEMPT))
    .values(published_at=db_now() - bindparam("ago"), publish_count=dispatches.c.publish_count + 1)
)

#: the attempt starts while its run runs; returns what the worker needs to call the task
START = (
    update(tasks)
    .where(
        *_on_attempt(TaskState.RUNNING),
        exists().where(runs.c.id == _RUN, runs.c.state == RunState.RUNNING.value),
    )
    .values(
        state=TaskState.RUNNING.value,
        started_at=db_now(),
        lease_until=db_now() + bindparam("lease"),
        deliveries=tasks.c.deliveries + 1,
        updated_at=db_now(),
    )
    .returning(
        tasks.c.name,
        tasks.c.params,
        tasks.c.sources,
        tasks.c.options,
        tasks.c.failures,
        select(run_definitions.c.inputs)
        .where(run_definitions.c.run_id == _RUN)
        .scalar_subquery()
        .label("inputs"),
    )
)

INSERT_ATTEMPT = insert(attempts).values(started_at=db_now())

#: the stored results of the tasks ``ids`` of a run
RESULTS = select(tasks.c.task_id, tasks.c.result).where(
    tasks.c.run_id == _RUN, tasks.c.task_id.in_(_IDS)
)

SUCCEED = (
    update(tasks)
    .where(*_on_attempt(TaskState.SUCCEEDED))
    .values(
        state=TaskState.SUCCEEDED.value,
        result=bindparam("result"),
        error_type=None,
        error_message=None,
        finished_at=db_now(),
        updated_at=db_now(),
    )
    .returning(tasks.c.children, tasks.c.options)
)

END_ATTEMPT = (
    update(attempts)
    .where(*attempt_key(attempts, _RUN, _TASK, _ATTEMPT))
    .values(
        state=bindparam("state"),
        finished_at=db_now(),
        error_type=bindparam("etype"),
        error_message=bindparam("emessage"),
        traceback=bindparam("etrace"),
    )
)

#: count tasks that reached a final state; the update locks the run's row
COUNT_FINISHED = (
    update(runs)
    .where(runs.c.id == _RUN)
    .values(
        tasks_unfinished=runs.c.tasks_unfinished - bindparam("finished"),
        tasks_failed=runs.c.tasks_failed + bindparam("failed"),
        updated_at=db_now(),
    )
    .returning(runs.c.state, runs.c.tasks_unfinished, runs.c.tasks_failed, runs.c.retries)
)

#: one parent of each child of ``ids`` is done
RELEASE = (
    update(tasks)
    .where(tasks.c.run_id == _RUN, tasks.c.task_id.in_(_IDS))
    .values(waiting_on=tasks.c.waiting_on - 1)
    .returning(tasks.c.task_id, tasks.c.waiting_on)
)

_INSERT_EVENTS = {
    "postgresql": postgresql.insert(events).values(created_at=db_now()).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(events).values(created_at=db_now()).on_conflict_do_nothing(),
}


def insert_events(conn: Connection) -> Any:
    """History rows, each recorded once: a second insert of a key is a no-op."""
    return _INSERT_EVENTS[conn.dialect.name]
