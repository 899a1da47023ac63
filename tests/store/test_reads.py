"""What following a run reads: the tasks that ended since a cursor, on both stores."""

from __future__ import annotations

from gleitzeit import RunState, TaskState
from gleitzeit.client import plan_run
from gleitzeit.store import ErrorInfo, Store
from gleitzeit.store.control import RetryRequest
from tests.store.test_store import chain, start_and_succeed


def ended(store: Store, run_id: str, since: float = 0.0) -> list[tuple[str, TaskState, int]]:
    _, found = store.get_finished(run_id, since)
    return [(f.task_id, f.state, f.attempt) for f in found]


def test_the_tasks_that_ended_since_a_cursor_and_only_those(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(3), {})).run_id
    assert ended(store, run_id) == []

    start_and_succeed(store, run_id, "t0", 1, "0")
    progress, [t0] = store.get_finished(run_id, 0.0)
    assert (t0.task_id, t0.state, progress.tasks_unfinished) == ("t0", TaskState.SUCCEEDED, 2)
    assert ended(store, run_id, since=t0.finished_at + 0.001) == []  # nothing new since

    assert store.start_attempt(run_id, "t1", 1) is not None
    store.record_failure(run_id, "t1", 1, ErrorInfo("ValueError", "bad"))

    progress, found = store.get_finished(run_id, t0.finished_at + 0.001)
    assert progress.state is RunState.FAILED  # read first: every end is in the list
    assert [(f.task_id, f.state) for f in found] == [
        ("t1", TaskState.FAILED),
        ("t2", TaskState.BLOCKED),
    ]
    assert all(f.finished_at >= t0.finished_at for f in found)


def test_a_success_a_retry_reruns_is_no_longer_an_end(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(2), {})).run_id
    start_and_succeed(store, run_id, "t0", 1, "0")
    start_and_succeed(store, run_id, "t1", 1, "1")
    assert [task for task, *_ in ended(store, run_id)] == ["t0", "t1"]

    store.retry_run(run_id, RetryRequest(strategy="from_start", by="test"))

    assert ended(store, run_id) == []  # both wait to run again; their attempts' rows stay
    start_and_succeed(store, run_id, "t0", 2, "0")
    assert ended(store, run_id) == [("t0", TaskState.SUCCEEDED, 2)]
