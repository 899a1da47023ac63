"""The reconciler's store operations on real SQLite and PostgreSQL: find, repair, fence."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import delete, update

from gleitzeit import RunState, TaskState, Workflow
from gleitzeit.client import plan_run
from gleitzeit.policy import Backoff
from gleitzeit.store import ErrorInfo, Store
from gleitzeit.store.records import Dispatch, Holder, Published, Repair, StuckRun
from gleitzeit.store.tables import dispatches, events, runs, tasks
from tests.store.test_store import start_and_succeed

NOW = {"republish_after": 0.0, "dispatch_timeout": 0.0, "stall_timeout": 3600.0}
LATER = {"republish_after": 3600.0, "dispatch_timeout": 3600.0, "stall_timeout": 3600.0}


def pair() -> Workflow:
    wf = Workflow("pair")
    first = wf.task("first", "tests.value", params={"value": 1})
    wf.task("second", "tests.add", params={"a": first.result, "b": 1})
    return wf


def submit(store: Store, wf: Workflow | None = None) -> str:
    return store.create_run(plan_run(wf or pair(), {})).run_id


def stuck_run(store: Store, run_id: str, **timeouts: float) -> StuckRun | None:
    found = store.find_stuck(**{**LATER, **timeouts})
    return next((s for s in found if s.run_id == run_id), None)


def repair(store: Store, stuck: StuckRun, *, republish_after: float = 0.0) -> Repair:
    return store.reconcile_run(
        stuck, republish_after=republish_after, stall_timeout=3600.0, max_lost=3
    )


def repairs(store: Store, run_id: str) -> list[tuple[str, str | None, int | None]]:
    """The run's events written by the reconciler: (type, task, attempt), in order."""
    return [
        (e.type, e.task_id, e.attempt)
        for e in store.get_events(run_id)
        if (e.data or {}).get("by") == "the reconciler"
    ]


def reason_of(store: Store, run_id: str, type_: str) -> str:
    (found,) = [e for e in store.get_events(run_id) if e.type == type_]
    return str(found.data["reason"])


def expire_lease(store: Store, run_id: str, task_id: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(tasks)
            .where(tasks.c.run_id == run_id, tasks.c.task_id == task_id)
            .values(lease_until=0.0)
        )


def test_a_claim_left_unpublished_is_published_again_by_one_reconciler(store: Store) -> None:
    run_id = submit(store)  # the root is claimed; nobody published it

    assert stuck_run(store, run_id, republish_after=60.0) is None  # younger than that
    with store.engine.begin() as conn:  # a minute passes
        conn.execute(update(dispatches).where(dispatches.c.run_id == run_id).values(created_at=0.0))
    stuck = stuck_run(store, run_id, republish_after=60.0)
    assert stuck is not None and stuck.unpublished == [("first", 1)]
    done = [repair(store, stuck, republish_after=60.0) for _ in range(2)]

    assert [len(r.republish) for r in done] == [1, 0]  # the second finds it claimed
    assert done[0].republish[0].attempt == 1
    assert stuck_run(store, run_id, republish_after=60.0) is None
    assert repairs(store, run_id) == [("task_republished", "first", 1)]  # once, not twice
    assert [e.type for e in store.get_events(run_id)][-1] == "task_republished"
    assert reason_of(store, run_id, "task_republished").startswith("left unpublished for ")


def test_a_row_republished_again_is_an_event_each_time(store: Store) -> None:
    run_id = submit(store)
    for _ in range(2):  # the first publish failed too: the row is taken again
        stuck = stuck_run(store, run_id, republish_after=0.0)
        assert stuck is not None
        assert len(repair(store, stuck).republish) == 1
        with store.engine.begin() as conn:
            conn.execute(
                update(dispatches).where(dispatches.c.run_id == run_id).values(claimed_at=0.0)
            )

    assert repairs(store, run_id) == [("task_republished", "first", 1)] * 2


def test_a_published_attempt_that_never_started_gets_a_new_attempt(store: Store) -> None:
    run_id = submit(store)
    store.mark_published([Published(Dispatch(run_id, "first", 1), time.monotonic())])

    stuck = stuck_run(store, run_id, dispatch_timeout=0.0)
    assert stuck is not None and stuck.unstarted == [("first", 1)]
    fixed = repair(store, stuck)

    assert [(d.task_id, d.attempt) for d in fixed.dispatches] == [("first", 2)]
    assert store.start_attempt(run_id, "first", 1) is None  # the lost message, if it comes
    assert store.start_attempt(run_id, "first", 2) is not None
    assert Counter(row.attempt for row in store.get_dispatches(run_id)) == {1: 1, 2: 1}
    assert repairs(store, run_id) == [("task_redispatched", "first", 1)]


def test_an_expired_lease_gives_a_new_attempt_and_fences_the_old_one(store: Store) -> None:
    run_id = submit(store)
    assert store.start_attempt(run_id, "first", 1, holder=Holder("elsewhere", 1)) is not None
    assert stuck_run(store, run_id) is None  # the lease is live
    expire_lease(store, run_id, "first")

    stuck = stuck_run(store, run_id)
    assert stuck is not None and stuck.lost == [("first", 1)]
    fixed = repair(store, stuck)

    assert fixed.applied == {"lost": 1}
    assert [(d.task_id, d.attempt) for d in fixed.dispatches] == [("first", 2)]
    task = store.get_tasks(run_id)["first"]
    assert (task.state, task.attempt) == (TaskState.RETRYING, 2)
    assert task.attempts[0].error_type == "gleitzeit.WorkerLost"
    assert repairs(store, run_id) == [("task_lost", "first", 1)]
    lost = [e for e in store.get_events(run_id) if e.task_id == "first"]
    assert [(e.type, e.attempt) for e in lost] == [
        ("task_queued", 1),
        ("task_started", 1),
        ("task_lost", 1),
        ("task_retrying", 1),
        ("task_queued", 2),
    ]
    assert lost[2].data == {
        "by": "the reconciler",
        "reason": "its lease expired",
        "lost": 1,
        "max_lost": 3,
    }
    # the vanished worker comes back after all: its outcome is fenced off
    assert not store.record_success(run_id, "first", 1, "1").recorded


def test_a_task_lost_max_times_fails_and_ends_the_run(store: Store) -> None:
    run_id = submit(store)
    for attempt in (1, 2, 3):
        assert store.start_attempt(run_id, "first", attempt) is not None
        recorded = store.attempt_lost(
            run_id, "first", attempt, reason="its worker process is gone", max_lost=3
        )
        assert recorded.recorded

    tasks_ = store.get_tasks(run_id)
    assert tasks_["first"].state is TaskState.FAILED
    assert "lost 3 times" in (tasks_["first"].error or "")
    assert tasks_["second"].state is TaskState.BLOCKED
    assert store.get_run(run_id).state is RunState.FAILED
    # found by a worker, not the reconciler: each loss is in the history all the same
    lost = [e for e in store.get_events(run_id) if e.type == "task_lost"]
    assert [(e.attempt, e.data["lost"], "by" in e.data) for e in lost] == [
        (1, 1, False),
        (2, 2, False),
        (3, 3, False),
    ]


def test_renewing_a_lease_stops_working_once_the_attempt_was_given_up(store: Store) -> None:
    run_id = submit(store)
    store.start_attempt(run_id, "first", 1)
    assert store.renew_lease(run_id, "first", 1)
    store.attempt_lost(run_id, "first", 1, reason="gone", max_lost=3)
    assert not store.renew_lease(run_id, "first", 1)


def test_a_run_whose_tasks_all_ended_is_marked_by_what_its_tasks_say(store: Store) -> None:
    wf = Workflow("one")
    wf.task("only", "tests.value", params={"value": 1})
    run_id = submit(store, wf)
    store.start_attempt(run_id, "only", 1)
    store.record_failure(run_id, "only", 1, ErrorInfo("ValueError", "bad"))
    with store.engine.begin() as conn:  # as if the run's own update had been lost
        conn.execute(update(runs).where(runs.c.id == run_id).values(state="running"))
        conn.execute(delete(events).where(events.c.run_id == run_id, events.c.type == "run_failed"))

    stuck = stuck_run(store, run_id)
    assert stuck is not None and stuck.finished
    assert repair(store, stuck).applied == {"finished": 1}
    assert store.get_run(run_id).state is RunState.FAILED
    assert repairs(store, run_id) == [("run_failed", None, None)]
    assert "not marked ended" in reason_of(store, run_id, "run_failed")


def test_a_ready_task_never_queued_is_claimed_as_an_event(store: Store) -> None:
    run_id = submit(store)
    with store.engine.begin() as conn:  # as if its parent's release had not claimed it
        conn.execute(
            update(tasks)
            .where(tasks.c.run_id == run_id, tasks.c.task_id == "second")
            .values(waiting_on=0)
        )

    stuck = stuck_run(store, run_id)
    assert stuck is not None and stuck.ready == ["second"]
    assert repair(store, stuck).applied == {"claimed": 1}

    assert repairs(store, run_id) == [("task_claimed", "second", 1)]
    second = [e.type for e in store.get_events(run_id) if e.task_id == "second"]
    assert second == ["task_claimed", "task_queued"]  # why, then what
    assert reason_of(store, run_id, "task_claimed") == "ready and never queued"


def test_a_stalled_run_fails_with_the_reason_and_nothing_starts_after(store: Store) -> None:
    run_id = submit(store)
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(updated_at=0.0))

    stuck = stuck_run(store, run_id, stall_timeout=60.0)
    assert stuck is not None and stuck.stalled
    fixed = store.reconcile_run(stuck, republish_after=0.0, stall_timeout=60.0, max_lost=3)

    assert fixed.applied == {"stalled": 1}
    run = store.get_run(run_id)
    assert run.state is RunState.FAILED and (run.error or "").startswith("stalled")
    states = {t: task.state for t, task in store.get_tasks(run_id).items()}
    assert states == {"first": TaskState.FAILED, "second": TaskState.BLOCKED}
    assert store.start_attempt(run_id, "first", 1) is None
    assert repairs(store, run_id) == [("run_failed", None, None)]


def saga_pair() -> Workflow:
    wf = Workflow("saga-pair")
    book = wf.task("book", "tests.value", params={"value": 1}, compensate="tests.undo")
    wf.task("ship", "tests.add", params={"a": book.result, "b": 1})
    return wf


def stall(store: Store, run_id: str) -> StuckRun:
    """Nothing of the run started or finished for a long time: the reconciler's finding."""
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(updated_at=0.0))
        conn.execute(update(tasks).where(tasks.c.run_id == run_id).values(started_at=0.0))
    stuck = stuck_run(store, run_id, stall_timeout=60.0)
    assert stuck is not None and stuck.stalled
    return stuck


def test_a_stalled_run_runs_its_compensations_then_ends_failed(store: Store) -> None:
    run_id = submit(store, saga_pair())
    assert [d.task_id for d in start_and_succeed(store, run_id, "book", 1, "1")] == ["ship"]

    fixed = store.reconcile_run(
        stall(store, run_id), republish_after=0.0, stall_timeout=60.0, max_lost=3
    )

    assert fixed.applied == {"stalled": 1}
    assert [(d.task_id, d.attempt) for d in fixed.dispatches] == [("book:compensate", 1)]
    run = store.get_run(run_id)
    assert run.state is RunState.RUNNING and (run.error or "").startswith("stalled")
    states = {t: task.state for t, task in store.get_tasks(run_id).items()}
    assert states == {
        "book": TaskState.SUCCEEDED,
        "ship": TaskState.FAILED,
        "book:compensate": TaskState.QUEUED,
    }
    compensating = [e for e in store.get_events(run_id) if e.type == "run_compensating"]
    assert [(e.data or {}).get("reason") for e in compensating] == [run.error]
    assert repairs(store, run_id) == [("run_compensating", None, None)]
    assert store.start_attempt(run_id, "ship", 1) is None

    assert start_and_succeed(store, run_id, "book:compensate", 1, '{"undid": 1}') == []
    run = store.get_run(run_id)
    assert run.state is RunState.FAILED and (run.error or "").startswith("stalled")
    assert [e.type for e in store.get_events(run_id)].count("run_failed") == 1


def test_a_stalled_run_closes_the_attempt_it_fails_while_running(store: Store) -> None:
    run_id = submit(store)
    assert store.start_attempt(run_id, "first", 1, worker="test") is not None
    expire_lease(store, run_id, "first")

    store.reconcile_run(stall(store, run_id), republish_after=0.0, stall_timeout=60.0, max_lost=3)

    first = store.get_tasks(run_id)["first"]
    assert first.state is TaskState.FAILED and first.error_type == "gleitzeit.RunFailed"
    [attempt] = first.attempts
    assert attempt.state == TaskState.FAILED.value and attempt.finished_at is not None
    assert (attempt.error_message or "").startswith("stalled")


def test_a_run_set_aside_to_the_limit_ends_failed_without_its_compensations(
    store: Store,
) -> None:
    run_id = submit(store, saga_pair())
    start_and_succeed(store, run_id, "book", 1, "1")
    backoff = Backoff(base=0.0, jitter=False)

    assert store.set_aside(run_id, "ValueError: bad", max_failures=1, backoff=backoff)

    assert store.get_run(run_id).state is RunState.FAILED
    assert set(store.get_tasks(run_id)) == {"book", "ship"}
    assert repairs(store, run_id) == [("run_set_aside", None, None), ("run_failed", None, None)]


def test_a_running_task_with_a_live_lease_is_not_a_stall(store: Store) -> None:
    run_id = submit(store)
    store.start_attempt(run_id, "first", 1)
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(updated_at=0.0))
        conn.execute(update(tasks).where(tasks.c.run_id == run_id).values(started_at=0.0))
    assert stuck_run(store, run_id, stall_timeout=60.0) is None


def test_a_run_set_aside_is_skipped_until_its_time_then_failed_at_the_limit(
    store: Store,
) -> None:
    run_id = submit(store)
    backoff = Backoff(base=3600.0, jitter=False)
    assert not store.set_aside(run_id, "ValueError: bad", max_failures=2, backoff=backoff)
    assert stuck_run(store, run_id, republish_after=0.0) is None  # put off for an hour
    assert store.get_run(run_id).state is RunState.RUNNING

    assert store.set_aside(run_id, "ValueError: bad", max_failures=2, backoff=backoff)
    run = store.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.error == "reconciliation failed 2 times in a row: ValueError: bad"
    assert [e.type for e in store.get_events(run_id)].count("run_set_aside") == 2


def test_two_reconcilers_repairing_one_finding_apply_it_once(store: Store) -> None:
    runs_ = [submit(store) for _ in range(20)]
    for run_id in runs_:
        store.start_attempt(run_id, "first", 1)
        expire_lease(store, run_id, "first")
    found = [s for s in store.find_stuck(**NOW) if s.run_id in runs_]
    barrier = threading.Barrier(2)
    repairs: list[Repair] = []

    def reconcile() -> None:
        barrier.wait()
        repairs.extend(repair(store, stuck) for stuck in found)

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.applied.get("lost", 0) for r in repairs) == 20
    for run_id in runs_:
        assert Counter(row.attempt for row in store.get_dispatches(run_id)) == {1: 1, 2: 1}
        assert [e.type for e in store.get_events(run_id)].count("task_lost") == 1


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_a_message_for_a_run_that_ended_does_no_work(store: Store, state: str) -> None:
    run_id = submit(store)
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(state=state))
    assert store.start_attempt(run_id, "first", 1) is None


def test_a_run_whose_repair_keeps_raising_is_set_aside_then_failed(store: Store) -> None:
    from gleitzeit import Settings
    from gleitzeit.dispatch import Dispatcher
    from gleitzeit.reconcile import Reconciler
    from gleitzeit.worker import create_app

    run_id = submit(store)
    with store.engine.begin() as conn:  # a ready task whose stored options cannot be read
        conn.execute(
            update(tasks)
            .where(tasks.c.run_id == run_id, tasks.c.task_id == "second")
            .values(waiting_on=0, options="{not json")
        )
    settings = Settings(reconcile_interval=3600.0, max_reconcile_failures=2)
    app = create_app(Settings(broker_url="memory://localhost/"))
    reconciler = Reconciler(store, Dispatcher(app, store), settings)

    assert run_id in reconciler.run_once().set_aside
    assert run_id not in reconciler.run_once().set_aside  # put off for an interval
    assert store.get_run(run_id).state is RunState.RUNNING
    assert store.get_tasks(run_id)["second"].state is TaskState.PENDING  # nothing half-written
    with store.engine.begin() as conn:  # the interval passes
        conn.execute(update(runs).where(runs.c.id == run_id).values(reconcile_after=0.0))
    assert run_id in reconciler.run_once().set_aside

    run = store.get_run(run_id)
    assert run.state is RunState.FAILED
    assert (run.error or "").startswith("reconciliation failed 2 times in a row: ")
