"""Failure strategies, sagas and run control in the store, on real SQLite and PostgreSQL.

A "worker" here is the test itself calling the store as the executor does (start, then
record the outcome), so that every interleaving is chosen, not hoped for. The same
behaviour with real Celery workers is in ``tests/integration/test_control.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gleitzeit import RunControlError, RunState, TaskState, Workflow, codec
from gleitzeit.client import plan_run
from gleitzeit.refs import lookup_in, resolve
from gleitzeit.store import ErrorInfo, Store
from gleitzeit.store.control import RetryRequest
from gleitzeit.store.records import Dispatch

#: what a simulated task does: return a value, or raise (a string starting "fail")
Behaviour = Callable[[str, dict[str, Any]], Any]


def submit(
    store: Store, wf: Workflow, inputs: dict[str, Any] | None = None
) -> tuple[str, list[Dispatch]]:
    submitted = store.create_run(plan_run(wf, inputs or {}))
    return submitted.run_id, list(submitted.dispatches)


def work(
    store: Store, run_id: str, queue: Sequence[Dispatch], behaviour: Behaviour
) -> list[tuple[str, dict[str, Any]]]:
    """Run every dispatched attempt to its end, as a worker would; return what ran with
    which params, in order."""
    ran = []
    pending = list(queue)
    while pending:
        d = pending.pop(0)
        started = store.start_attempt(d.run_id, d.task_id, d.attempt)
        if started is None:
            continue
        params = resolve(
            started.params, lookup_in(started.inputs, started.results, skipped=started.skipped)
        )
        ran.append((d.task_id, params))
        outcome = behaviour(d.task_id, params)
        if isinstance(outcome, Exception):
            recorded = store.record_failure(
                run_id, d.task_id, d.attempt, ErrorInfo(type(outcome).__name__, str(outcome))
            )
        else:
            recorded = store.record_success(run_id, d.task_id, d.attempt, codec.dumps(outcome))
        pending.extend(recorded.dispatches)
    return ran


def failing(*names: str) -> Behaviour:
    def behave(task_id: str, params: dict[str, Any]) -> Any:
        if task_id in names:
            return ValueError(f"{task_id} broke")
        return {"task": task_id, "params": params}

    return behave


def states(store: Store, run_id: str) -> dict[str, TaskState]:
    return {k: t.state for k, t in store.get_tasks(run_id).items()}


def event_types(store: Store, run_id: str) -> list[str]:
    return [e.type for e in store.get_events(run_id)]


# -- skip and alternative ----------------------------------------------------------------


def test_a_skipped_failure_lets_dependents_run_with_none(store: Store) -> None:
    wf = Workflow("skip")
    wf.task("enrich", "app.enrich", on_failure="skip")
    wf.task("load", "app.load", params={"extra": "${enrich.result.rows.0}", "n": 1})

    run_id, queue = submit(store, wf)
    ran = work(store, run_id, queue, failing("enrich"))

    assert ran[-1] == ("load", {"extra": None, "n": 1})
    assert states(store, run_id) == {"enrich": TaskState.SKIPPED, "load": TaskState.SUCCEEDED}
    assert store.get_run(run_id).state is RunState.SUCCEEDED
    skipped = store.get_tasks(run_id)["enrich"]
    assert skipped.error == "ValueError: enrich broke"  # the error is kept
    assert "task_skipped" in event_types(store, run_id)


def alternative_workflow() -> Workflow:
    wf = Workflow("alt")
    wf.task("fetch", "app.fetch", on_failure="alternative:cached")
    wf.task("cached", "app.cached", params={"from": "cache"})
    wf.task("use", "app.use", params={"value": "${fetch.result.task}"})
    return wf


def test_an_alternative_runs_in_place_of_a_failed_task(store: Store) -> None:
    run_id, queue = submit(store, alternative_workflow())
    assert [d.task_id for d in queue] == ["fetch"]  # the alternative waits

    ran = work(store, run_id, queue, failing("fetch"))

    assert [task_id for task_id, _ in ran] == ["fetch", "cached", "use"]
    assert ran[-1] == ("use", {"value": "cached"})  # read through fetch's id
    assert states(store, run_id) == {
        "fetch": TaskState.SKIPPED,
        "cached": TaskState.SUCCEEDED,
        "use": TaskState.SUCCEEDED,
    }
    assert store.get_run(run_id).state is RunState.SUCCEEDED
    replaced = next(e for e in store.get_events(run_id) if e.type == "task_replaced")
    assert "cached runs in its place" in replaced.data["by"]


def test_an_alternative_is_not_run_when_its_task_succeeds(store: Store) -> None:
    run_id, queue = submit(store, alternative_workflow())

    ran = work(store, run_id, queue, failing())

    assert [task_id for task_id, _ in ran] == ["fetch", "use"]
    assert states(store, run_id)["cached"] is TaskState.SKIPPED
    assert {d.task_id for d in store.get_dispatches(run_id)} == {"fetch", "use"}
    assert store.get_run(run_id).state is RunState.SUCCEEDED


def test_a_failing_alternative_blocks_the_dependents_and_fails_the_run(store: Store) -> None:
    run_id, queue = submit(store, alternative_workflow())

    work(store, run_id, queue, failing("fetch", "cached"))

    assert states(store, run_id) == {
        "fetch": TaskState.SKIPPED,
        "cached": TaskState.FAILED,
        "use": TaskState.BLOCKED,
    }
    assert store.get_run(run_id).state is RunState.FAILED


# -- sagas ---------------------------------------------------------------------------------


def saga(length: int = 5) -> Workflow:
    wf = Workflow("saga")
    previous = None
    for i in range(1, length + 1):
        params: dict[str, Any] = {"step": i}
        if previous:
            params["after"] = f"${{{previous}.result.task}}"
        wf.task(f"s{i}", "app.step", params=params, compensate="app.undo")
        previous = f"s{i}"
    return wf


def test_a_failed_saga_runs_the_compensations_latest_first(store: Store) -> None:
    run_id, queue = submit(store, saga())

    ran = work(store, run_id, queue, failing("s4"))

    compensations = [(tid, params) for tid, params in ran if tid.endswith(":compensate")]
    assert [tid for tid, _ in compensations] == ["s3:compensate", "s2:compensate", "s1:compensate"]
    # each gets the original task's params and its result
    _tid, params = compensations[0]
    assert params["step"] == 3 and params["after"] == "s2"
    assert params["result"] == {"task": "s3", "params": {"step": 3, "after": "s2"}}
    assert store.get_run(run_id).state is RunState.FAILED
    found = states(store, run_id)
    assert found["s4"] is TaskState.FAILED and found["s5"] is TaskState.BLOCKED
    assert {found[f"s{i}:compensate"] for i in (1, 2, 3)} == {TaskState.SUCCEEDED}
    assert "run_compensating" in event_types(store, run_id)


def test_a_failing_compensation_is_recorded_and_the_others_still_run(store: Store) -> None:
    run_id, queue = submit(store, saga())

    ran = work(store, run_id, queue, failing("s4", "s2:compensate"))

    assert [tid for tid, _ in ran if tid.endswith(":compensate")] == [
        "s3:compensate",
        "s2:compensate",
        "s1:compensate",
    ]
    found = states(store, run_id)
    assert found["s2:compensate"] is TaskState.FAILED
    assert found["s1:compensate"] is TaskState.SUCCEEDED
    assert store.get_run(run_id).state is RunState.FAILED


def test_a_run_that_succeeds_runs_no_compensation(store: Store) -> None:
    run_id, queue = submit(store, saga(3))

    ran = work(store, run_id, queue, failing())

    assert [tid for tid, _ in ran] == ["s1", "s2", "s3"]
    assert store.get_run(run_id).state is RunState.SUCCEEDED


# -- pause and resume ------------------------------------------------------------------------


def fan(width: int) -> Workflow:
    wf = Workflow("fan")
    wf.task("start", "app.x")
    for i in range(width):
        wf.task(f"p{i}", "app.x", depends_on=["start"])
    return wf


def test_nothing_is_dispatched_or_started_while_paused(store: Store) -> None:
    run_id, _queue = submit(store, fan(3))
    store.start_attempt(run_id, "start", 1)
    assert store.pause_run(run_id, by="test").changed
    assert not store.pause_run(run_id, by="test").changed  # idempotent

    # the running task finishes and is recorded; its children are not claimed
    finished = store.record_success(run_id, "start", 1, "1")

    assert finished.recorded and finished.dispatches == []
    assert [d.task_id for d in store.get_dispatches(run_id)] == ["start"]
    assert store.get_run(run_id).state is RunState.PAUSED

    resumed = store.resume_run(run_id, by="test")

    assert sorted(d.task_id for d in resumed.dispatches) == ["p0", "p1", "p2"]
    assert not store.resume_run(run_id, by="test").changed
    work(store, run_id, resumed.dispatches, failing())
    assert store.get_run(run_id).state is RunState.SUCCEEDED
    types = event_types(store, run_id)
    assert types.index("run_paused") < types.index("run_resumed")


def test_a_message_delivered_while_paused_does_no_work_and_resume_sends_a_new_one(
    store: Store,
) -> None:
    run_id, _queue = submit(store, fan(1))
    store.pause_run(run_id, by="test")

    assert store.start_attempt(run_id, "start", 1) is None  # delivered while paused

    resumed = store.resume_run(run_id, by="test")
    assert [(d.task_id, d.attempt) for d in resumed.dispatches] == [("start", 2)]
    assert store.start_attempt(run_id, "start", 1) is None  # the old copy stays stale
    work(store, run_id, resumed.dispatches, failing())
    assert store.get_run(run_id).state is RunState.SUCCEEDED


def test_a_retry_decided_while_paused_is_dispatched_on_resume_without_using_a_retry(
    store: Store,
) -> None:
    wf = Workflow("flaky")
    wf.task("t", "app.x", retries=1)
    run_id, _ = submit(store, wf)
    store.start_attempt(run_id, "t", 1)
    store.pause_run(run_id, by="test")

    retried = store.record_failure(run_id, "t", 1, ErrorInfo("OSError", "x"), retry_in=0.0)

    assert retried.recorded and retried.dispatches == []
    resumed = store.resume_run(run_id, by="test")
    assert [(d.task_id, d.attempt) for d in resumed.dispatches] == [("t", 2)]
    started = store.start_attempt(run_id, "t", 2)
    assert started is not None and started.failures == 1


def test_pause_and_resume_of_an_ended_run_are_refused(store: Store) -> None:
    run_id, queue = submit(store, fan(1))
    work(store, run_id, queue, failing())

    with pytest.raises(RunControlError, match="already ended succeeded"):
        store.pause_run(run_id, by="test")
    with pytest.raises(RunControlError, match="already ended succeeded"):
        store.resume_run(run_id, by="test")


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_ends_the_run_and_nothing_starts_or_is_recorded_after_it(store: Store) -> None:
    run_id, _queue = submit(store, fan(3))
    store.start_attempt(run_id, "start", 1)
    released = store.record_success(run_id, "start", 1, "1").dispatches
    store.start_attempt(run_id, "p0", 1)

    cancelled = store.cancel_run(run_id, by="test")

    assert cancelled.changed
    assert len(cancelled.revoke) == 3  # p0 running, p1 and p2 queued
    assert store.get_run(run_id).state is RunState.CANCELLED
    assert states(store, run_id) == {
        "start": TaskState.SUCCEEDED,
        **{f"p{i}": TaskState.CANCELLED for i in range(3)},
    }
    assert all(store.start_attempt(d.run_id, d.task_id, d.attempt) is None for d in released)
    assert not store.record_success(run_id, "p0", 1, "1").recorded  # its late outcome
    assert not store.cancel_run(run_id, by="test").changed  # idempotent
    cancelled_events = [e for e in store.get_events(run_id) if e.type == "task_cancelled"]
    assert len(cancelled_events) == 3
    # who cancelled, as every control names it (history: "task_cancelled p0#1  by test")
    assert [e.data for e in cancelled_events] == [{"by": "test"}] * 3


def test_cancel_of_a_finished_run_is_refused_and_changes_nothing(store: Store) -> None:
    run_id, queue = submit(store, fan(1))
    work(store, run_id, queue, failing())
    before = len(store.get_events(run_id))

    with pytest.raises(RunControlError, match="already ended succeeded: nothing to cancel"):
        store.cancel_run(run_id, by="test")

    assert store.get_run(run_id).state is RunState.SUCCEEDED
    assert len(store.get_events(run_id)) == before


# -- workflow retry --------------------------------------------------------------------------


def diamond() -> Workflow:
    wf = Workflow("diamond")
    wf.task("a", "app.x", params={"day": "${inputs.day}"})
    wf.task("b", "app.x", params={"a": "${a.result.task}"})
    wf.task("c", "app.x", params={"a": "${a.result.task}", "size": "${inputs.size}"})
    wf.task("d", "app.x", depends_on=["b", "c"])
    wf.task("other", "app.x")
    return wf


def request(strategy: str, **kwargs: Any) -> RetryRequest:
    return RetryRequest(strategy=strategy, by="test", **kwargs)


def test_retry_from_failure_reruns_only_the_failed_part(store: Store) -> None:
    run_id, queue = submit(store, diamond(), {"day": "mon", "size": 1})
    first = work(store, run_id, queue, failing("c"))
    assert store.get_run(run_id).state is RunState.FAILED

    retried = store.retry_run(run_id, request("from_failure"))

    assert retried.rerun == ["c", "d"]
    assert [(d.task_id, d.attempt) for d in retried.dispatches] == [("c", 2)]
    second = work(store, run_id, retried.dispatches, failing())
    assert [tid for tid, _ in second] == ["c", "d"]
    assert {tid for tid, _ in first} >= {"a", "b", "other"}
    record = store.get_run(run_id)
    assert (record.state, record.tasks_unfinished, record.tasks_failed) == (
        RunState.SUCCEEDED,
        0,
        0,
    )
    retried_event = next(e for e in store.get_events(run_id) if e.type == "run_retried")
    assert retried_event.data["by"] == "test" and retried_event.data["rerun"] == ["c", "d"]
    assert event_types(store, run_id).count("run_succeeded") == 1


def test_retry_with_new_inputs_reruns_the_tasks_that_read_them(store: Store) -> None:
    run_id, queue = submit(store, diamond(), {"day": "mon", "size": 1})
    work(store, run_id, queue, failing("c"))

    retried = store.retry_run(
        run_id, request("from_failure", changed=frozenset({"c"}), inputs='{"day":"mon","size":2}')
    )
    ran = work(store, run_id, retried.dispatches, failing())

    assert ("c", {"a": "a", "size": 2}) in ran
    assert store.get_run(run_id).inputs == {"day": "mon", "size": 2}


def test_retry_skip_failed_skips_the_failure_and_runs_what_it_blocked(store: Store) -> None:
    run_id, queue = submit(store, diamond(), {"day": "mon", "size": 1})
    work(store, run_id, queue, failing("c"))

    retried = store.retry_run(run_id, request("skip_failed"))
    ran = work(store, run_id, retried.dispatches, failing())

    assert [tid for tid, _ in ran] == ["d"]
    found = states(store, run_id)
    assert found["c"] is TaskState.SKIPPED and found["d"] is TaskState.SUCCEEDED
    assert store.get_run(run_id).state is RunState.SUCCEEDED


def test_retry_skip_failed_skips_every_failure_at_once(store: Store) -> None:
    run_id, queue = submit(store, diamond(), {"day": "mon", "size": 1})
    work(store, run_id, queue, failing("b", "c", "other"))

    retried = store.retry_run(run_id, request("skip_failed"))
    ran = work(store, run_id, retried.dispatches, failing())

    assert [tid for tid, _ in ran] == ["d"]
    found = states(store, run_id)
    assert {found[t] for t in ("b", "c", "other")} == {TaskState.SKIPPED}
    assert store.get_run(run_id).state is RunState.SUCCEEDED


def test_retry_from_start_reruns_everything(store: Store) -> None:
    run_id, queue = submit(store, diamond(), {"day": "mon", "size": 1})
    work(store, run_id, queue, failing("c"))

    retried = store.retry_run(run_id, request("from_start"))
    ran = work(store, run_id, retried.dispatches, failing())

    assert sorted(tid for tid, _ in ran) == ["a", "b", "c", "d", "other"]
    attempts = {tid: t.attempt for tid, t in store.get_tasks(run_id).items()}
    assert attempts == {"a": 2, "b": 2, "c": 2, "d": 1, "other": 2}  # d was blocked before


def test_retry_of_a_running_run_is_refused_and_changes_nothing(store: Store) -> None:
    run_id, _ = submit(store, diamond(), {"day": "mon", "size": 1})
    before = (states(store, run_id), len(store.get_events(run_id)))

    with pytest.raises(RunControlError, match="is still running"):
        store.retry_run(run_id, request("from_failure"))

    assert (states(store, run_id), len(store.get_events(run_id))) == before


def test_retry_of_a_compensated_run_must_start_over(store: Store) -> None:
    run_id, queue = submit(store, saga(3))
    work(store, run_id, queue, failing("s3"))

    with pytest.raises(RunControlError, match="compensations of this run have run"):
        store.retry_run(run_id, request("from_failure"))

    retried = store.retry_run(run_id, request("from_start"))
    work(store, run_id, retried.dispatches, failing())
    assert sorted(states(store, run_id)) == ["s1", "s2", "s3"]  # compensation rows gone
    assert store.get_run(run_id).state is RunState.SUCCEEDED


def test_retry_reruns_a_replaced_task_and_puts_its_alternative_back_on_standby(
    store: Store,
) -> None:
    run_id, queue = submit(store, alternative_workflow())
    work(store, run_id, queue, failing("fetch"))

    retried = store.retry_run(run_id, request("from_failure"))
    ran = work(store, run_id, retried.dispatches, failing())

    assert [tid for tid, _ in ran] == ["fetch", "use"]
    assert ran[-1] == ("use", {"value": "fetch"})
    assert states(store, run_id)["cached"] is TaskState.SKIPPED


def test_a_pause_racing_20_completions_is_wholly_before_or_after_each(store: Store) -> None:
    wf = Workflow("pairs")
    wf.task("start", "app.x")
    for i in range(20):
        wf.task(f"p{i}", "app.x", depends_on=["start"])
        wf.task(f"c{i}", "app.x", depends_on=[f"p{i}"])
    run_id, _ = submit(store, wf)
    store.start_attempt(run_id, "start", 1)
    store.record_success(run_id, "start", 1, "1")
    for i in range(20):
        assert store.start_attempt(run_id, f"p{i}", 1) is not None

    barrier = threading.Barrier(21)

    def finish(i: int) -> list[Dispatch]:
        barrier.wait()
        return store.record_success(run_id, f"p{i}", 1, "1").dispatches

    def pause() -> list[Dispatch]:
        barrier.wait()
        store.pause_run(run_id, by="race")
        return []

    with ThreadPoolExecutor(max_workers=21) as pool:
        futures = [pool.submit(finish, i) for i in range(20)] + [pool.submit(pause)]
        claimed = [d for future in futures for d in future.result()]

    paused_at = next(e.created_at for e in store.get_events(run_id) if e.type == "run_paused")
    ledger = {d.task_id: d for d in store.get_dispatches(run_id) if d.task_id.startswith("c")}
    assert sorted(ledger) == sorted(d.task_id for d in claimed)
    assert all(d.created_at <= paused_at for d in ledger.values())
    resumed = store.resume_run(run_id, by="race")
    # what was claimed before the pause is re-sent (never started); the rest is claimed now
    assert sorted(d.task_id for d in resumed.dispatches) == sorted(f"c{i}" for i in range(20))
