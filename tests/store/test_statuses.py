"""What drawing a run's graph reads from the store: states, attempts, errors, nothing more."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from gleitzeit import RunNotFound, RunState, TaskState, Workflow
from gleitzeit.client import plan_run
from gleitzeit.store import ErrorInfo, Store


def pair() -> Workflow:
    wf = Workflow("pair")
    wf.task("first", "tests.value", params={"value": "x" * 10_000})
    wf.task("second", "tests.add", params={"a": "${first.result}", "b": 1})
    wf.task("other", "tests.value", params={"value": 2})
    return wf


def test_a_runs_statuses_are_its_tasks_states_attempts_and_errors(store: Store) -> None:
    run_id = store.create_run(plan_run(pair(), {})).run_id
    store.start_attempt(run_id, "first", 1)
    store.record_failure(run_id, "first", 1, ErrorInfo("ValueError", "bad\nrow"))
    assert store.start_attempt(run_id, "other", 1) is not None
    store.record_success(run_id, "other", 1, '"' + "r" * 100_000 + '"')

    read: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        read.append(" ".join(statement.split()))

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        record, statuses = store.get_run_statuses(run_id)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)

    assert record.id == run_id and record.state is RunState.FAILED
    assert {key: (s.state, s.attempt, s.error) for key, s in statuses.items()} == {
        "first": (TaskState.FAILED, 1, "ValueError: bad\nrow"),
        "second": (TaskState.BLOCKED, 0, None),
        "other": (TaskState.SUCCEEDED, 1, None),
    }
    (tasks_read,) = [s for s in read if "FROM gz_tasks" in s]
    assert "result" not in tasks_read and "params" not in tasks_read  # the large columns


def test_statuses_of_a_run_that_does_not_exist(store: Store) -> None:
    with pytest.raises(RunNotFound):
        store.get_run_statuses("no-such-run")
