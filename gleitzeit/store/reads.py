"""The store's read queries, each a function of an open connection."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, select

from gleitzeit import codec
from gleitzeit.errors import RunNotFound
from gleitzeit.states import FINAL_TASK_STATES, RunState, TaskState
from gleitzeit.store.records import (
    AttemptRecord,
    DispatchRecord,
    EventRecord,
    FinishedTask,
    RunProgress,
    RunRecord,
    TaskRecord,
    TaskStatus,
    message_id,
)
from gleitzeit.store.tables import (
    attempts,
    dispatches,
    events,
    run_definitions,
    runs,
    state_in,
    tasks,
)

#: what a waiting caller polls: the run's row only (its definition, read and parsed at
#: every poll, cost a caller waiting on a 5,000-task run 2 ms of CPU per task)
_PROGRESS = select(
    runs.c.state, runs.c.tasks_total, runs.c.tasks_unfinished, runs.c.tasks_failed
).where(runs.c.id == bindparam("r"))

#: what drawing a run's graph needs of its tasks: no params, results or timings
_STATUSES = select(
    tasks.c.task_id, tasks.c.state, tasks.c.attempt, tasks.c.error_type, tasks.c.error_message
).where(tasks.c.run_id == bindparam("r"))

#: a run's row with its definition
_RUNS = select(runs, run_definitions.c.graph, run_definitions.c.inputs).join(
    run_definitions, run_definitions.c.run_id == runs.c.id
)


def get_run(conn: Connection, run_id: str) -> RunRecord:
    row = conn.execute(_RUNS.where(runs.c.id == run_id)).one_or_none()
    if row is None:
        raise RunNotFound(run_id)
    return _run_record(row)


def get_progress(conn: Connection, run_id: str) -> RunProgress:
    row = conn.execute(_PROGRESS, {"r": run_id}).one_or_none()
    if row is None:
        raise RunNotFound(run_id)
    return RunProgress(
        state=RunState(row.state),
        tasks_total=row.tasks_total,
        tasks_unfinished=row.tasks_unfinished,
        tasks_failed=row.tasks_failed,
    )


#: the digits of a run id (a UUID's, with its hyphens) in the order every collation gives them
_ID_DIGITS = "0123456789abcdef"


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """Bounds ``low <= id < high`` around every id starting with ``prefix`` (``high`` None:
    no upper bound), so that the primary key's index reads only them.

    For a prefix of a UUID the upper bound counts up in hex digits, leaving the hyphens
    out: PostgreSQL under a language's collation (``en_US.UTF-8``) ignores hyphens when it
    orders, and its digits and ``a-f`` come in this order under every collation; the range
    may then hold a few ids the ``LIKE`` beside it leaves out. Any other prefix takes
    the next code point (byte order: SQLite, PostgreSQL's ``C`` collation).
    """
    digits = prefix.replace("-", "")
    if digits and all(c in _ID_DIGITS for c in digits):
        head = digits.rstrip("f")
        if not head:
            return prefix, None
        return prefix, head[:-1] + _ID_DIGITS[_ID_DIGITS.index(head[-1]) + 1]
    if not prefix:
        return prefix, None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def run_ids_query(prefix: str, *, limit: int) -> Select[Any]:
    """Ids starting with ``prefix``, in order: a range of the primary key's index."""
    low, high = prefix_range(prefix)
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        select(runs.c.id)
        .where(runs.c.id >= low, runs.c.id.like(escaped + "%", escape="\\"))
        .order_by(runs.c.id)
        .limit(limit)
    )
    return query if high is None else query.where(runs.c.id < high)


def run_ids_starting(conn: Connection, prefix: str, *, limit: int) -> list[str]:
    return list(conn.execute(run_ids_query(prefix, limit=limit)).scalars())


def list_runs(
    conn: Connection, *, status: str | None = None, name: str | None = None, limit: int = 50
) -> list[RunRecord]:
    query = _RUNS.order_by(runs.c.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(runs.c.state == RunState(status).value)
    if name is not None:
        query = query.where(runs.c.name == name)
    return [_run_record(row) for row in conn.execute(query)]


#: the tasks that ended other than by a success, whose attempt rows do not say so
_ENDED_OTHERWISE = sorted(s.value for s in FINAL_TASK_STATES if s is not TaskState.SUCCEEDED)

#: successes since ``:since``, from the attempts' rows (a success's has no traceback, so
#: reading its ``finished_at`` follows no overflow page on SQLite), still the task's own
_SUCCEEDED_SINCE = (
    select(attempts.c.task_id, attempts.c.attempt, attempts.c.finished_at)
    .select_from(
        attempts.join(
            tasks,
            and_(
                tasks.c.run_id == attempts.c.run_id,
                tasks.c.task_id == attempts.c.task_id,
                tasks.c.attempt == attempts.c.attempt,
            ),
        )
    )
    .where(
        attempts.c.run_id == bindparam("r"),
        attempts.c.state == TaskState.SUCCEEDED.value,
        attempts.c.finished_at >= bindparam("since"),
        state_in([TaskState.SUCCEEDED.value]),
    )
)

#: every other end since ``:since``: failed, skipped, blocked, cancelled (the state, an early
#: column, rules a row out before its ``finished_at``, after the large values, is read)
_ENDED_SINCE = select(tasks.c.task_id, tasks.c.state, tasks.c.attempt, tasks.c.finished_at).where(
    tasks.c.run_id == bindparam("r"),
    state_in(_ENDED_OTHERWISE),
    tasks.c.finished_at >= bindparam("since"),
)


def get_finished(conn: Connection, run_id: str, since: float) -> list[FinishedTask]:
    """The run's tasks that ended at or after ``since`` (the database's clock), in order.

    For a caller following a run: it reads the run's attempt and task rows by primary key,
    their first columns only, and returns only what ended since its last look.
    """
    params = {"r": run_id, "since": since}
    found = [
        FinishedTask(row.task_id, TaskState.SUCCEEDED, row.attempt, row.finished_at)
        for row in conn.execute(_SUCCEEDED_SINCE, params)
    ]
    found += [
        FinishedTask(row.task_id, TaskState(row.state), row.attempt, row.finished_at)
        for row in conn.execute(_ENDED_SINCE, params)
    ]
    return sorted(found, key=lambda f: (f.finished_at, f.task_id))


def get_tasks(
    conn: Connection, run_id: str, *, with_attempts: bool = True
) -> dict[str, TaskRecord]:
    by_task: dict[str, list[AttemptRecord]] = {}
    if with_attempts:
        query = (
            select(attempts)
            .where(attempts.c.run_id == run_id)
            .order_by(attempts.c.task_id, attempts.c.attempt)
        )
        for row in conn.execute(query):
            by_task.setdefault(row.task_id, []).append(_attempt_record(row))
    found = conn.execute(select(tasks).where(tasks.c.run_id == run_id)).all()
    return {row.task_id: _task_record(row, by_task.get(row.task_id, [])) for row in found}


def get_task_statuses(conn: Connection, run_id: str) -> dict[str, TaskStatus]:
    return {
        row.task_id: TaskStatus(
            task_id=row.task_id,
            state=TaskState(row.state),
            attempt=row.attempt,
            error_type=row.error_type,
            error_message=row.error_message,
        )
        for row in conn.execute(_STATUSES, {"r": run_id})
    }


#: the order of events at the same instant (SQLite's clock has 1 ms steps): a task's
#: success, then what its transaction recorded (a run's end), then the attempts it queued
_SAME_INSTANT = {"task_succeeded": 0, "task_queued": 2, "task_started": 3}
_STORED = 1


def get_events(conn: Connection, run_id: str) -> list[EventRecord]:
    """The run's history: the events stored as such, and each attempt's progress read from
    the dispatch ledger (queued) and the attempts' rows (started, succeeded), which the
    hot path writes anyway, in time order."""
    found = [
        EventRecord(
            id=row.id,
            key=row.key,
            type=row.type,
            task_id=row.task_id,
            attempt=row.attempt,
            data=codec.loads(row.data),
            created_at=row.created_at,
        )
        for row in conn.execute(
            select(events).where(events.c.run_id == run_id).order_by(events.c.id)
        )
    ]
    ledger = select(
        dispatches.c.task_id, dispatches.c.attempt, dispatches.c.countdown, dispatches.c.created_at
    ).where(dispatches.c.run_id == run_id)
    for row in conn.execute(ledger):
        data = {"countdown": row.countdown} if row.countdown else None
        found.append(_progress(row, "queued", data, row.created_at))
    started = select(
        attempts.c.task_id,
        attempts.c.attempt,
        attempts.c.state,
        attempts.c.worker,
        attempts.c.started_at,
        attempts.c.finished_at,
    ).where(attempts.c.run_id == run_id)
    for attempt in conn.execute(started):
        found.append(_progress(attempt, "started", {"worker": attempt.worker}, attempt.started_at))
        if attempt.state == TaskState.SUCCEEDED.value:
            found.append(_progress(attempt, "succeeded", None, attempt.finished_at))
    return sorted(
        found,
        key=lambda e: (
            e.created_at,
            _SAME_INSTANT.get(e.type, _STORED),
            e.id or 0,
            e.task_id or "",
            e.attempt or 0,
        ),
    )


def _progress(row: Any, what: str, data: Any, at: float) -> EventRecord:
    return EventRecord(
        id=None,
        key=f"{row.task_id}:{row.attempt}:{what}",
        type=f"task_{what}",
        task_id=row.task_id,
        attempt=row.attempt,
        data=data,
        created_at=at,
    )


def get_dispatches(conn: Connection, run_id: str) -> list[DispatchRecord]:
    """The dispatch ledger of a run: one row per published attempt."""
    query = (
        select(dispatches)
        .where(dispatches.c.run_id == run_id)
        .order_by(dispatches.c.created_at, dispatches.c.task_id, dispatches.c.attempt)
    )
    return [
        DispatchRecord(
            task_id=row.task_id,
            attempt=row.attempt,
            message_id=message_id(run_id, row.task_id, row.attempt),
            queue=row.queue,
            countdown=row.countdown,
            created_at=row.created_at,
            published_at=row.published_at,
            publish_count=row.publish_count,
        )
        for row in conn.execute(query)
    ]


def get_results(conn: Connection, run_id: str) -> dict[str, Any]:
    """Results of the run's succeeded tasks, by task id."""
    query = select(tasks.c.task_id, tasks.c.result).where(
        and_(tasks.c.run_id == run_id, state_in([TaskState.SUCCEEDED.value]))
    )
    return {row.task_id: codec.loads(row.result) for row in conn.execute(query)}


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        id=row.id,
        name=row.name,
        key=row.key,
        state=RunState(row.state),
        graph=codec.loads(row.graph),
        graph_hash=row.graph_hash,
        inputs=codec.loads(row.inputs),
        tasks_total=row.tasks_total,
        tasks_unfinished=row.tasks_unfinished,
        tasks_failed=row.tasks_failed,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _attempt_record(row: Any) -> AttemptRecord:
    return AttemptRecord(
        task_id=row.task_id,
        attempt=row.attempt,
        state=row.state,
        worker=row.worker,
        error_type=row.error_type,
        error_message=row.error_message,
        traceback=row.traceback,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _task_record(row: Any, attempt_records: list[AttemptRecord]) -> TaskRecord:
    return TaskRecord(
        task_id=row.task_id,
        name=row.name,
        state=TaskState(row.state),
        attempt=row.attempt,
        result=codec.loads(row.result),
        error_type=row.error_type,
        error_message=row.error_message,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=attempt_records,
    )
