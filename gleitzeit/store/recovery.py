"""The reconciler's repairs, and giving up on lost attempts: functions of one transaction.

``Store.reconcile_run``, ``Store.attempt_lost`` and ``Store.set_aside`` run these in their
transaction; every repair re-checks, in its own conditional ``UPDATE``, the condition the
sweep (:mod:`gleitzeit.store.sweep`) found, so a finding made stale by normal progress or by
another reconciler changes nothing. Every repair applied is an event of the run's history,
written by the same transaction, ``by`` :data:`RECONCILER` (a repair lost to a race writes
none).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, exists, func, select, update

from gleitzeit import codec
from gleitzeit.errors import RunFailed, WorkerLost
from gleitzeit.policy import Backoff, compute_backoff, type_name
from gleitzeit.states import FINAL_TASK_STATES, RunState, TaskState, run_sources, task_moves
from gleitzeit.store import failures, steps, sweep
from gleitzeit.store.records import Dispatch, ErrorInfo, Recorded, Repair, RunCount, StuckRun
from gleitzeit.store.tables import (
    attempt_key,
    attempts,
    db_now,
    dispatches,
    on_attempt,
    runs,
    state_in,
    tasks,
)

#: the error types a task's error is recorded with when the reconciler gives it up
_WORKER_LOST = type_name(WorkerLost)
_RUN_FAILED = type_name(RunFailed)

#: who made a repair, in its event's ``by``
RECONCILER = "the reconciler"


def lose(
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    reason: str,
    max_lost: int,
    expired_only: bool,
) -> Recorded:
    running = on_attempt(run_id, task_id, attempt, [TaskState.RUNNING.value])
    if expired_only:
        running.append(tasks.c.lease_until < db_now())
    row = conn.execute(
        update(tasks)
        .where(*running)
        .values(lost=tasks.c.lost + 1, lease_until=None)
        .returning(tasks.c.lost)
    ).one_or_none()
    if row is None:
        return Recorded(False)
    data: dict[str, Any] = {"reason": reason, "lost": row.lost, "max_lost": max_lost}
    if expired_only:
        data["by"] = RECONCILER
    steps.event(conn, run_id, f"{task_id}:{attempt}:lost", "task_lost", task_id, attempt, data=data)
    if row.lost >= max_lost:
        error = ErrorInfo(
            _WORKER_LOST,
            f"gave up after the worker running this task was lost {row.lost} times "
            f"(killed, out of memory, or stopped without finishing); last: {reason}",
        )
        return failures.fail(conn, run_id, task_id, attempt, error, by_task=False)
    error = ErrorInfo(_WORKER_LOST, f"{reason} (lost {row.lost} of {max_lost})")
    return failures.retry(conn, run_id, task_id, attempt, error, 0.0, by_task=False)


def reconcile(
    conn: Connection,
    stuck: StuckRun,
    *,
    republish_after: float,
    stall_timeout: float,
    max_lost: int,
) -> Repair:
    """Repair one run; every repair re-checks its own condition."""
    repair = Repair()
    if steps.lock_run(conn, stuck.run_id) is not RunState.RUNNING:
        return repair  # paused, cancelled or ended since it was found
    if stuck.finished:
        compensations = finalize(conn, stuck.run_id, why=_UNMARKED)
        if compensations is not None:
            repair.dispatches.extend(compensations)
            _count(repair, "finished", 1)
    elif stuck.stalled:
        reason = f"stalled: no task started or finished for {stall_timeout:g} s"
        failed = fail_run(conn, stuck.run_id, reason, sweep.stalled_condition(stall_timeout))
        if failed is not None:
            repair.dispatches.extend(failed)  # its compensations
            _count(repair, "stalled", 1)
    if repair.applied:
        return repair
    found = steps.claim(conn, stuck.run_id, stuck.ready, why=_claimed)
    repair.dispatches.extend(found)
    _count(repair, "claimed", len(found))
    for task_id, attempt in stuck.unstarted:
        found = redispatch(conn, stuck.run_id, task_id, attempt, by=RECONCILER)
        repair.dispatches.extend(found)
        _count(repair, "redispatched", len(found))
    for task_id, attempt in stuck.lost:
        recorded = lose(conn, stuck.run_id, task_id, attempt, "its lease expired", max_lost, True)
        repair.dispatches.extend(recorded.dispatches)
        _count(repair, "lost", recorded.recorded)
    republish = claim_unpublished(conn, stuck, republish_after)
    repair.republish.extend(republish)
    _count(repair, "republished", len(republish))
    conn.execute(
        update(runs)
        .where(runs.c.id == stuck.run_id, runs.c.reconcile_failures > 0)
        .values(reconcile_failures=0, reconcile_after=None, error=None)
    )
    return repair


def _count(repair: Repair, kind: str, n: int | bool) -> None:
    if n:
        repair.applied[kind] = repair.applied.get(kind, 0) + int(n)


#: why the reconciler ended a run, in its end's event
_UNMARKED = {"by": RECONCILER, "reason": "every task had ended; the run was not marked ended"}


def _claimed(d: Dispatch) -> dict[str, Any]:
    return _repaired(d.run_id, d.task_id, d.attempt, "claimed", reason="ready and never queued")


def _repaired(
    run_id: str, task_id: str, attempt: int, what: str, *, key: str = "", **data: Any
) -> dict[str, Any]:
    """The event row of the reconciler's repair ``what`` of an attempt."""
    return {
        "run_id": run_id,
        "key": f"{task_id}:{attempt}:{what}{key}",
        "type": f"task_{what}",
        "task_id": task_id,
        "attempt": attempt,
        "data": codec.dumps({"by": RECONCILER, **data}),
    }


def redispatch(
    conn: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    *,
    why: str = "unstarted",
    reason: str = "its message was not started within the dispatch timeout",
    by: str | None = None,
) -> list[Dispatch]:
    """A new attempt for one whose message was published and never started."""
    row = conn.execute(
        update(tasks)
        .where(
            *on_attempt(
                run_id,
                task_id,
                attempt,
                task_moves(TaskState.QUEUED, TaskState.RETRYING, to=TaskState.QUEUED),
            )
        )
        .values(
            state=TaskState.QUEUED.value,
            attempt=attempt + 1,
            queued_at=db_now(),
            updated_at=db_now(),
        )
        .returning(tasks.c.options)
    ).one_or_none()
    if row is None:
        return []
    steps.event(
        conn,
        run_id,
        f"{task_id}:{attempt}:{why}",
        "task_redispatched",
        task_id,
        attempt,
        data={"reason": reason, **({"by": by} if by else {})},
    )
    found = [steps.dispatch_of(run_id, task_id, attempt + 1, row.options)]
    steps.write_dispatches(conn, found)
    return found


def claim_unpublished(conn: Connection, stuck: StuckRun, republish_after: float) -> list[Dispatch]:
    """Take unpublished ledger rows to publish again; another reconciler will not.

    Each row taken is a ``task_republished`` event (a row may be taken again, when its
    publish failed too: each time is an event of its own), all in one insert.
    """
    found = []
    taken = []
    for task_id, attempt in stuck.unpublished:
        row = conn.execute(
            update(dispatches)
            .where(
                *attempt_key(dispatches, stuck.run_id, task_id, attempt),
                dispatches.c.published_at.is_(None),
                func.coalesce(dispatches.c.claimed_at, dispatches.c.created_at)
                < db_now() - republish_after,
            )
            .values(claimed_at=db_now())
            .returning(
                (dispatches.c.created_at + dispatches.c.countdown - db_now()).label("due_in"),
                (db_now() - dispatches.c.created_at).label("waited"),
            )
        ).one_or_none()
        if row is None:
            continue
        reason = f"left unpublished for {float(row.waited):.1f} s (the broker was down, or "
        reason += "its publisher stopped before it published)"
        taken.append(
            _repaired(
                stuck.run_id, task_id, attempt, "republished", key=f":{uuid.uuid4()}", reason=reason
            )
        )
        options = conn.execute(
            select(tasks.c.options).where(
                tasks.c.run_id == stuck.run_id, tasks.c.task_id == task_id
            )
        ).scalar_one()
        countdown = max(0.0, float(row.due_in))
        found.append(steps.dispatch_of(stuck.run_id, task_id, attempt, options, countdown))
    steps.events(conn, taken)
    return found


def finalize(
    conn: Connection, run_id: str, *, why: dict[str, Any] | None = None
) -> list[Dispatch] | None:
    """End a run whose tasks are all final, by what its tasks say (``why``: for its event).

    Returns the compensations to publish when it failed and has some to run, else
    ``None`` when the run was not ended by this call.
    """
    failed = conn.execute(
        select(func.count()).where(tasks.c.run_id == run_id, state_in([TaskState.FAILED.value]))
    ).scalar_one()
    unfinished = exists().where(
        tasks.c.run_id == run_id,
        tasks.c.state.not_in([state.value for state in FINAL_TASK_STATES]),
    )
    row = conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.state == RunState.RUNNING.value, ~unfinished)
        .values(tasks_unfinished=0, tasks_failed=failed, updated_at=db_now())
        .returning(runs.c.state, runs.c.retries)
    ).one_or_none()
    if row is None:
        return None
    count = RunCount(RunState(row.state), 0, failed, row.retries)
    return steps.end_if_done(conn, run_id, count, why=why)


def fail_run(
    conn: Connection, run_id: str, reason: str, condition: Any = None, *, saga: bool = True
) -> list[Dispatch] | None:
    """Fail a run for ``reason``: what has not finished will not run.

    With ``saga``, a run with compensations to make runs them first (it stays ``running``,
    its error set) and ends ``failed`` when they are done. Returns the compensations to
    publish (``[]`` when the run ended at once), or ``None`` when it was not failed by this
    call (``condition`` no longer held, or it had ended).
    """
    where = [runs.c.id == run_id, runs.c.state.in_(run_sources(RunState.FAILED))]
    if condition is not None:
        where.append(condition)
    run = conn.execute(
        update(runs)
        .where(*where)
        .values(error=reason, tasks_unfinished=0, updated_at=db_now())
        .returning(runs.c.state, runs.c.retries, runs.c.tasks_failed)
    ).one_or_none()
    if run is None:
        return None
    started = (TaskState.QUEUED, TaskState.RETRYING, TaskState.RUNNING)
    failed = conn.execute(
        update(tasks)
        .where(
            tasks.c.run_id == run_id,
            state_in(task_moves(*started, to=TaskState.FAILED)),
        )
        .values(
            state=TaskState.FAILED.value,
            error_type=_RUN_FAILED,
            error_message=reason,
            lease_until=None,
            finished_at=db_now(),
            updated_at=db_now(),
        )
    ).rowcount
    conn.execute(
        update(attempts)
        .where(attempts.c.run_id == run_id, attempts.c.state == TaskState.RUNNING.value)
        .values(
            state=TaskState.FAILED.value,
            error_type=_RUN_FAILED,
            error_message=reason,
            finished_at=db_now(),
        )
    )
    conn.execute(
        update(tasks)
        .where(
            tasks.c.run_id == run_id,
            state_in(task_moves(TaskState.PENDING, to=TaskState.BLOCKED)),
        )
        .values(state=TaskState.BLOCKED.value, finished_at=db_now(), updated_at=db_now())
    )
    count = RunCount(RunState(run.state), 0, run.tasks_failed + failed, run.retries)
    if saga and count.failed:
        # counted first: the run ends failed when its last compensation is done
        # (steps.end_if_done reads the count)
        conn.execute(update(runs).where(runs.c.id == run_id).values(tasks_failed=count.failed))
        compensations = steps.compensate(conn, run_id, count, by=RECONCILER, reason=reason)
        if compensations is not None:
            return compensations
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(state=RunState.FAILED.value, tasks_failed=count.failed, finished_at=db_now())
    )
    steps.event(
        conn,
        run_id,
        f"run:{run.retries}:failed",
        "run_failed",
        data={"by": RECONCILER, "reason": reason},
    )
    return []


def set_aside(
    conn: Connection, run_id: str, error: str, *, max_failures: int, backoff: Backoff
) -> bool:
    """Count a failed reconciliation of a run; fail it after ``max_failures`` in a row."""
    found = conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.state == RunState.RUNNING.value)
        .values(reconcile_failures=runs.c.reconcile_failures + 1, error=error)
        .returning(runs.c.reconcile_failures, runs.c.retries)
    ).one_or_none()
    if found is None:
        return False
    failures = found.reconcile_failures
    retry_in = compute_backoff(failures, backoff)
    conn.execute(
        update(runs).where(runs.c.id == run_id).values(reconcile_after=db_now() + retry_in)
    )
    steps.event(
        conn,
        run_id,
        f"run:{found.retries}:set-aside:{failures}",
        "run_set_aside",
        data={"by": RECONCILER, "error": error, "failures": failures, "retry_in": retry_in},
    )
    if failures < max_failures:
        return False
    reason = f"reconciliation failed {failures} times in a row: {error}"
    # a run the reconciler cannot repair is not run further, not even its compensations
    return fail_run(conn, run_id, reason, saga=False) is not None
