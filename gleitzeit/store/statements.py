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

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    Connection,
    bindparam,
    exists,
    insert,
    select,
    text,
    update,
)
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


#: pending tasks of ``ids`` with nothing left to wait on become queued on a new attempt.
#: By primary key only: with an index on state usable, SQLite read every pending task of
#: every run for each claim of three or more children (a claim grew with the store).
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


# -- PostgreSQL: a task's start, its success and a submit, each in one statement ---------
#
# The statements above are one round trip each, and a task's progress takes ten of them
# in two transactions: on PostgreSQL over TCP the round trips, not the work, cost the
# most. There, data-modifying CTEs do the same work in one statement per transaction,
# run in autocommit (a single statement is its own transaction). Where one of them finds
# anything but the common case (a stale message, a run's last task, an alternative or a
# stand-in), it changes nothing and returns no row, and the store runs the general path
# above in a transaction of its own. SQLite has no data-modifying CTEs.
#
# Sub-statements of one statement share a snapshot; each one that must see the others'
# locks reads through a CTE that took them (``fenced`` locks the task's row before the
# run's row is counted, the order of the general path), and ``UPDATE`` re-reads a row
# that changed since the snapshot before it writes it (READ COMMITTED).

_NOW = "extract(epoch from clock_timestamp())::float8"


def _state_in(column: str, states: Sequence[str]) -> str:
    """The SQL text of ``column`` being one of ``states`` (values of the state enums)."""
    return "(" + " OR ".join(f"{column} = '{state}'" for state in states) + ")"


#: stamps the attempts ``:mr/:mt/:ma`` (parallel arrays) published ``:mago`` seconds ago
_MARK_FROM_ARRAYS = f"""
    UPDATE gz_dispatches d
    SET published_at = {_NOW} - m.ago, publish_count = d.publish_count + 1
    FROM unnest(CAST(:mr AS text[]), CAST(:mt AS text[]), CAST(:ma AS int[]),
                CAST(:mago AS float8[])) AS m(r, t, a, ago)
    WHERE d.run_id = m.r AND d.task_id = m.t AND d.attempt = m.a
    RETURNING 1"""

#: a CTE that makes its statement's commit not wait for the WAL to reach the disk (for its
#: transaction only); a statement must read it for it to run
_LAZY_COMMIT = "lazy_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS previous)"

#: marks the published attempts ``:mr/:mt/:ma`` (arrays) ``:mago`` seconds ago, starts the
#: attempt; returns what the worker needs to call the task, with its parents' results.
#: Its commit is asynchronous (``synchronous_commit = off`` for this transaction only): a
#: start lost with the database server's last instants of WAL leaves the attempt queued,
#: the worker's outcome is then fenced off and the attempt runs again once the reconciler
#: republishes it: the at-least-once every crash already means. The message is acknowledged
#: only after its outcome is on disk (``PG_CONFIRM_SUCCESS``).
PG_START = text(
    f"""
WITH marked AS ({_MARK_FROM_ARRAYS}
), started AS (
    -- after the marks (reading ``marked`` makes it run first): a mark that waits for a
    -- lock must not hold the attempt's lease, which starts here, in the past
    UPDATE gz_tasks
    SET state = '{TaskState.RUNNING.value}', started_at = {_NOW},
        lease_until = {_NOW} + :lease, deliveries = deliveries + 1, updated_at = {_NOW}
    WHERE run_id = :r AND task_id = :t AND attempt = :a
        AND {_state_in("state", task_sources(TaskState.RUNNING))}
        AND EXISTS (SELECT FROM gz_runs WHERE id = :r AND state = '{RunState.RUNNING.value}')
        AND (SELECT count(*) FROM marked) >= 0
    RETURNING name, params, sources, options, failures
), attempt_row AS (
    INSERT INTO gz_attempts (run_id, task_id, attempt, state, worker, host, pid, started_at)
    SELECT :r, :t, :a, '{TaskState.RUNNING.value}', :worker, :host, :pid, {_NOW} FROM started
), {_LAZY_COMMIT}
SELECT started.*,
    (SELECT inputs FROM gz_run_definitions WHERE run_id = :r) AS inputs,
    (SELECT json_object_agg(p.task_id, p.result) FROM gz_tasks p
     WHERE p.run_id = :r
        AND p.task_id = ANY(ARRAY(SELECT json_array_elements_text(started.sources::json)))
    ) AS results
FROM started, lazy_commit
"""
)

# a child of the task becomes ready: its last parent is done and the run runs
_CLAIMABLE = task_moves(TaskState.PENDING, to=TaskState.QUEUED)
_READY = (
    f"c.waiting_on = 1 AND {_state_in('c.state', _CLAIMABLE)}"
    f" AND (SELECT state FROM counted) = '{RunState.RUNNING.value}'"
)

#: records the attempt's success, counts it, releases its children and claims (with their
#: ledger rows) those now ready; no row when the general path must do it. Its commit is
#: asynchronous, as the start's: a synchronous one would hold the lock on the run's row,
#: which every success of the run takes to count itself, while the WAL is written to disk,
#: and the run's successes would wait for each other's disk writes one after the other.
#: ``PG_CONFIRM_SUCCESS`` then waits for the disk with no lock held, before the message
#: is acknowledged.
PG_SUCCEED = text(
    f"""
WITH fenced AS (
    SELECT FROM gz_tasks
    WHERE run_id = :r AND task_id = :t AND attempt = :a
        AND {_state_in("state", task_sources(TaskState.SUCCEEDED))}
        AND options::json ->> 'stands_in_for' IS NULL
        AND coalesce(options::json ->> 'on_failure', '') NOT LIKE 'alternative:%'
    FOR UPDATE
), counted AS (
    UPDATE gz_runs SET tasks_unfinished = tasks_unfinished - 1, updated_at = {_NOW}
    WHERE id = :r AND tasks_unfinished > 1 AND EXISTS (SELECT FROM fenced)
    RETURNING state
), succeeded AS (
    UPDATE gz_tasks
    SET state = '{TaskState.SUCCEEDED.value}', result = :result, error_type = NULL,
        error_message = NULL, finished_at = {_NOW}, updated_at = {_NOW}
    WHERE run_id = :r AND task_id = :t AND attempt = :a AND EXISTS (SELECT FROM counted)
    RETURNING children
), ended AS (
    UPDATE gz_attempts SET state = '{TaskState.SUCCEEDED.value}', finished_at = {_NOW}
    WHERE run_id = :r AND task_id = :t AND attempt = :a AND EXISTS (SELECT FROM counted)
), released AS (
    UPDATE gz_tasks c
    SET waiting_on = c.waiting_on - 1,
        state = CASE WHEN {_READY} THEN '{TaskState.QUEUED.value}' ELSE c.state END,
        attempt = CASE WHEN {_READY} THEN c.attempt + 1 ELSE c.attempt END,
        queued_at = CASE WHEN {_READY} THEN {_NOW} ELSE c.queued_at END,
        updated_at = CASE WHEN {_READY} THEN {_NOW} ELSE c.updated_at END
    WHERE c.run_id = :r
        AND c.task_id = ANY(ARRAY(SELECT json_array_elements_text(children::json) FROM succeeded))
    RETURNING c.task_id, c.attempt, c.options, c.state, c.waiting_on
), claimed AS (
    -- only the decrement that reached zero claims (a task is queued only at zero)
    SELECT task_id, attempt, options FROM released
    WHERE waiting_on = 0 AND state = '{TaskState.QUEUED.value}'
), ledger AS (
    INSERT INTO gz_dispatches (run_id, task_id, attempt, queue, countdown, publish_count,
                               created_at)
    SELECT :r, task_id, attempt, options::json ->> 'queue', 0, 0, {_NOW} FROM claimed
), {_LAZY_COMMIT}
SELECT claimed.task_id, claimed.attempt, claimed.options
FROM counted CROSS JOIN lazy_commit LEFT JOIN claimed ON true
"""
)

#: marks the published attempts ``:mr/:mt/:ma`` (arrays) ``:mago`` seconds ago, alone (a
#: caller after its submit, a worker's ``LedgerMarks`` thread). Its commit is asynchronous:
#: a mark is for operators and for the reconciler's "unpublished" check, and one lost with
#: the server's last WAL makes the reconciler publish that attempt once more, a copy its fence
#: turns away.
PG_MARK_PUBLISHED = text(
    f"""
WITH marked AS ({_MARK_FROM_ARRAYS}
), {_LAZY_COMMIT}
SELECT (SELECT count(*) FROM marked) AS marked FROM lazy_commit
"""
)

#: the state of the attempt whose success ``PG_SUCCEED`` committed lazily, returned once that
#: commit is on disk: this statement's own transaction takes a transaction id, so its commit
#: is written and, synchronous, waits until the WAL is on disk up to its own record, past
#: every commit it could see. ``succeeded``: the success is durable. ``running``: the success
#: was lost with the database server's last instants of WAL (only after a reconnection).
PG_CONFIRM_SUCCESS = text(
    """
SELECT pg_current_xact_id() AS transaction,
    (SELECT state FROM gz_attempts WHERE run_id = :r AND task_id = :t AND attempt = :a) AS state
"""
)

#: a submit: inserts the run ``:id``, its definition, its tasks (parallel arrays, one element
#: per task) and its ``run_submitted`` event, claims the roots (``:waiting_on`` 0: inserted
#: queued, on attempt 1, as ``CLAIM`` leaves them) with their ledger rows, and returns them;
#: one row with ``created = 0`` and nothing else when ``:key`` names a run already. Its
#: commit waits for the disk, as every submit's: the run exists once this returns. Every row
#: is stamped with one instant: PostgreSQL runs the CTEs nothing reads at the end, in an order
#: of its own, so with each reading the clock itself the roots' ledger rows (their
#: ``task_queued``) were stamped before the ``run_submitted`` event.
PG_CREATE_RUN = text(
    f"""
WITH now AS MATERIALIZED (SELECT {_NOW} AS at
), run AS (
    INSERT INTO gz_runs (id, name, key, state, graph_hash, inputs_hash, tasks_total,
                         tasks_unfinished, tasks_failed, created_at, updated_at)
    VALUES (:id, :name, :key, '{RunState.RUNNING.value}', :graph_hash, :inputs_hash, :total,
            :total, 0, (SELECT at FROM now), (SELECT at FROM now))
    ON CONFLICT (key) DO NOTHING
    RETURNING id
), definition AS (
    INSERT INTO gz_run_definitions (run_id, graph, inputs) SELECT id, :graph, :inputs FROM run
), created AS (
    INSERT INTO gz_tasks (run_id, task_id, name, state, attempt, waiting_on, params, sources,
                          children, options, deliveries, queued_at, updated_at)
    SELECT run.id, t.task_id, t.name,
        CASE WHEN t.waiting_on = 0
            THEN '{TaskState.QUEUED.value}' ELSE '{TaskState.PENDING.value}' END,
        CASE WHEN t.waiting_on = 0 THEN 1 ELSE 0 END,
        t.waiting_on, t.params, t.sources, t.children, t.options, 0,
        CASE WHEN t.waiting_on = 0 THEN (SELECT at FROM now) END, (SELECT at FROM now)
    FROM run, unnest(CAST(:task_ids AS text[]), CAST(:names AS text[]),
                     CAST(:waiting_on AS int[]), CAST(:params AS text[]),
                     CAST(:sources AS text[]), CAST(:children AS text[]),
                     CAST(:options AS text[]))
        AS t(task_id, name, waiting_on, params, sources, children, options)
    RETURNING task_id, attempt, options
), claimed AS (
    SELECT task_id, attempt, options FROM created WHERE attempt = 1
), submitted AS (
    INSERT INTO gz_events (run_id, key, type, data, created_at)
    SELECT id, 'run:submitted', 'run_submitted', :event_data, (SELECT at FROM now) FROM run
), ledger AS (
    INSERT INTO gz_dispatches (run_id, task_id, attempt, queue, countdown, publish_count,
                               created_at)
    SELECT :id, task_id, attempt, options::json ->> 'queue', 0, 0, (SELECT at FROM now)
    FROM claimed
)
SELECT (SELECT count(*) FROM run) AS created, claimed.task_id, claimed.attempt, claimed.options
FROM (SELECT 1) AS one LEFT JOIN claimed ON true
"""
)
