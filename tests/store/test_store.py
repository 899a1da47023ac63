"""The store on real SQLite and PostgreSQL: schema, claims, fencing, counters."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import IntegrityError, OperationalError

from gleitzeit import RunState, StorageFailure, TaskState, Workflow
from gleitzeit.client import plan_run
from gleitzeit.dispatch import LedgerMarks
from gleitzeit.store import Dispatch, ErrorInfo, Store, direct, migrate
from gleitzeit.store.engine import make_engine
from gleitzeit.store.records import Published
from gleitzeit.store.tables import metadata
from tests.conftest import POSTGRES_ENV
from tests.services import postgres_database, wait_until


def chain(length: int) -> Workflow:
    wf = Workflow(f"chain-{length}")
    wf.task("t0", "tests.value", params={"value": 0})
    for i in range(1, length):
        wf.task(f"t{i}", "tests.add", params={"a": f"${{t{i - 1}.result}}", "b": 1})
    return wf


def fan(width: int) -> Workflow:
    wf = Workflow(f"fan-{width}")
    wf.task("start", "tests.value", params={"value": 1})
    for i in range(width):
        wf.task(f"p{i}", "tests.value", params={"value": "${start.result}"})
    wf.task("join", "tests.total", params={"values": [f"${{p{i}.result}}" for i in range(width)]})
    return wf


def start_and_succeed(
    store: Store, run_id: str, task_id: str, attempt: int, result: str
) -> list[Dispatch]:
    assert store.start_attempt(run_id, task_id, attempt, worker="test") is not None
    recorded = store.record_success(run_id, task_id, attempt, result)
    assert recorded.recorded
    return recorded.dispatches


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store's engine runs while the test looks."""
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    direct.listen(seen.append)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
        direct.remove(seen.append)


def test_migrations_match_the_tables(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


@pytest.fixture
def empty_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own, on the server the session's store uses, with no schema."""
    if not database_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with postgres_database(os.environ[POSTGRES_ENV]) as url:
        yield url


def test_an_upgrade_keeps_a_run_in_flight_which_then_ends(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "0006")  # the schema an earlier release left
    store = Store(engine)
    run_id = store.create_run(plan_run(chain(2), {"day": "2026-11-21"})).run_id
    start_and_succeed(store, run_id, "t0", 1, "0")

    migrate.upgrade(engine)
    start_and_succeed(store, run_id, "t1", 1, "1")

    run = store.get_run(run_id)
    assert run.state is RunState.SUCCEEDED
    assert run.inputs == {"day": "2026-11-21"} and run.graph == chain(2).to_dict()
    if engine.dialect.name == "sqlite":
        # every start reads the inputs: after the graph, SQLite would read all its pages
        with engine.connect() as conn:
            columns = conn.exec_driver_sql("PRAGMA table_info(gz_run_definitions)").all()
        assert [column[1] for column in columns] == ["run_id", "inputs", "graph"]
    engine.dispose()


def test_submit_claims_only_the_roots(store: Store) -> None:
    submitted = store.create_run(plan_run(fan(3), {}))

    assert [d.task_id for d in submitted.dispatches] == ["start"]
    tasks = store.get_tasks(submitted.run_id)
    assert tasks["start"].state is TaskState.QUEUED and tasks["start"].attempt == 1
    assert {tasks[f"p{i}"].state for i in range(3)} == {TaskState.PENDING}
    assert store.get_run(submitted.run_id).state is RunState.RUNNING


def test_a_join_is_claimed_by_the_last_parent_only(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(3), {})).run_id
    released = start_and_succeed(store, run_id, "start", 1, "1")
    assert sorted(d.task_id for d in released) == ["p0", "p1", "p2"]

    assert start_and_succeed(store, run_id, "p0", 1, "1") == []
    assert start_and_succeed(store, run_id, "p1", 1, "1") == []
    last = start_and_succeed(store, run_id, "p2", 1, "1")

    assert [(d.task_id, d.attempt) for d in last] == [("join", 1)]


def test_an_outcome_is_recorded_once(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(2), {})).run_id
    assert store.start_attempt(run_id, "t0", 1) is not None
    assert store.start_attempt(run_id, "t0", 1) is None  # a second delivery does no work

    first = store.record_success(run_id, "t0", 1, "0")
    second = store.record_success(run_id, "t0", 1, "0")
    late_failure = store.record_failure(run_id, "t0", 1, ErrorInfo("ValueError", "late"))

    assert first.recorded and [d.task_id for d in first.dispatches] == ["t1"]
    assert not second.recorded and second.dispatches == []
    assert not late_failure.recorded
    assert store.get_tasks(run_id)["t0"].state is TaskState.SUCCEEDED
    kinds = [e.type for e in store.get_events(run_id) if e.task_id == "t0"]
    assert kinds.count("task_succeeded") == 1
    assert "outcome_ignored" in kinds


def test_one_completion_reported_50_times_at_once_dispatches_each_child_once(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(20), {})).run_id
    assert store.start_attempt(run_id, "start", 1) is not None

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(
            pool.map(lambda _: store.record_success(run_id, "start", 1, "1"), range(50))
        )

    assert sum(o.recorded for o in outcomes) == 1
    assert sorted(d.task_id for o in outcomes for d in o.dispatches) == sorted(
        f"p{i}" for i in range(20)
    )
    assert len(store.get_dispatches(run_id)) == 21


def test_a_retry_is_a_new_attempt_with_its_own_dispatch(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(1), {})).run_id
    store.start_attempt(run_id, "t0", 1)

    retried = store.record_failure(run_id, "t0", 1, ErrorInfo("OSError", "flaky"), retry_in=2.5)

    assert [(d.task_id, d.attempt, d.countdown) for d in retried.dispatches] == [("t0", 2, 2.5)]
    assert store.start_attempt(run_id, "t0", 1) is None  # the old attempt is fenced off
    assert store.start_attempt(run_id, "t0", 2) is not None
    assert store.record_success(run_id, "t0", 2, "7").recorded
    task = store.get_tasks(run_id)["t0"]
    assert (task.state, task.attempt, task.result) == (TaskState.SUCCEEDED, 2, 7)
    assert [a.state for a in task.attempts] == ["failed", "succeeded"]
    assert store.get_run(run_id).state is RunState.SUCCEEDED


def test_a_failure_blocks_everything_downstream_and_ends_the_run(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(5), {})).run_id
    store.start_attempt(run_id, "t0", 1)

    store.record_failure(run_id, "t0", 1, ErrorInfo("ValueError", "bad"))

    states = {k: t.state for k, t in store.get_tasks(run_id).items()}
    assert states == {"t0": TaskState.FAILED, **{f"t{i}": TaskState.BLOCKED for i in range(1, 5)}}
    record = store.get_run(run_id)
    assert (record.state, record.tasks_unfinished, record.tasks_failed) == (RunState.FAILED, 0, 1)


def test_a_failure_blocks_a_fan_of_dependents_and_what_waits_on_them(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(4), {})).run_id
    store.start_attempt(run_id, "start", 1)

    store.record_failure(run_id, "start", 1, ErrorInfo("ValueError", "bad"))

    states = {k: t.state for k, t in store.get_tasks(run_id).items()}
    blocked = {f"p{i}": TaskState.BLOCKED for i in range(4)}
    assert states == {"start": TaskState.FAILED, **blocked, "join": TaskState.BLOCKED}
    assert store.get_run(run_id).state is RunState.FAILED


def _statements_to_finish_one_task(store: Store, statements: list[str], length: int) -> int:
    run_id = store.create_run(plan_run(chain(length), {})).run_id
    for i in range(3):
        start_and_succeed(store, run_id, f"t{i}", 1, str(i))
    statements.clear()
    start_and_succeed(store, run_id, "t3", 1, "3")
    return len(statements)


def test_finishing_a_task_costs_the_same_in_a_small_and_a_huge_graph(
    store: Store, statements: list[str]
) -> None:
    small = _statements_to_finish_one_task(store, statements, 10)
    huge = _statements_to_finish_one_task(store, statements, 10_000)

    assert small == huge
    if store.direct is not None:
        # PostgreSQL: the start and the success are one statement each, in autocommit (the
        # worker then waits for the success on disk with a third: Store.confirm_success)
        assert small == 2
    else:
        # start: move, attempt row, parents' results; finish: move, attempt row, run
        # count, release, claim, ledger row; and SQLite's two BEGINs
        assert small <= 11


def _sqlite_steps_to_finish_the_root(tmp_path: Path, waiting_elsewhere: int) -> int:
    """SQLite virtual-machine steps (in hundreds) to finish a root that releases 5 tasks."""
    store = Store.open(f"sqlite:///{tmp_path / f'gz-{waiting_elsewhere}.db'}")
    steps = [0]

    def count_steps(dbapi_connection: Any, _: object) -> None:
        def tick() -> int:
            steps[0] += 1
            return 0  # go on

        dbapi_connection.set_progress_handler(tick, 100)

    event.listen(store.engine, "connect", count_steps)
    store.engine.dispose()
    if waiting_elsewhere:
        store.create_run(plan_run(fan(waiting_elsewhere), {}))
    (root,) = store.create_run(plan_run(fan(5), {})).dispatches
    steps[0] = 0
    released = start_and_succeed(store, root.run_id, root.task_id, root.attempt, "1")
    assert len(released) == 5
    return steps[0]


def test_a_claim_costs_the_same_however_many_tasks_wait_in_other_runs(tmp_path: Path) -> None:
    # SQLite's planner, without statistics, used to read an index on the state for a claim
    # of three or more tasks: every pending task of every run, for each claim
    alone = _sqlite_steps_to_finish_the_root(tmp_path, 0)
    crowded = _sqlite_steps_to_finish_the_root(tmp_path, 3000)
    assert crowded <= alone + alone // 4, (alone, crowded)


def test_the_last_parents_of_a_join_finishing_at_once_claim_it_once(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(20), {})).run_id
    start_and_succeed(store, run_id, "start", 1, "1")
    for i in range(20):
        assert store.start_attempt(run_id, f"p{i}", 1) is not None

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(
            pool.map(lambda i: store.record_success(run_id, f"p{i}", 1, str(i)), range(20))
        )

    assert all(o.recorded for o in outcomes)
    assert [(d.task_id, d.attempt) for o in outcomes for d in o.dispatches] == [("join", 1)]
    join = store.get_tasks(run_id)["join"]
    assert (join.state, join.attempt) == (TaskState.QUEUED, 1)
    started = store.start_attempt(run_id, "join", 1)
    assert started is not None and started.results == {f"p{i}": i for i in range(20)}
    assert store.get_run(run_id).tasks_unfinished == 1


def test_a_stale_start_still_marks_what_its_process_published_once(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(2), {})).run_id
    released = start_and_succeed(store, run_id, "start", 1, "1")

    stale = store.start_attempt(run_id, "start", 1, published=published_now(released))

    assert stale is None
    assert {t: p for t, p in _published(store, run_id).items() if t != "start"} == {
        "p0": (True, 1),
        "p1": (True, 1),
    }
    ignored = [e.key for e in store.get_events(run_id) if e.type == "delivery_ignored"]
    assert ignored == ["start:1:ignored-delivery"]


def test_the_last_task_of_a_run_ends_it_with_its_success(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(2), {})).run_id
    start_and_succeed(store, run_id, "t0", 1, "1")
    assert store.get_run(run_id).state is RunState.RUNNING

    assert start_and_succeed(store, run_id, "t1", 1, "2") == []

    record = store.get_run(run_id)
    assert (record.state, record.tasks_unfinished) == (RunState.SUCCEEDED, 0)
    assert store.get_results(run_id) == {"t0": 1, "t1": 2}
    assert [e.type for e in store.get_events(run_id)].count("run_succeeded") == 1


def test_a_history_begins_with_the_submit_then_the_roots_queued(store: Store) -> None:
    # PostgreSQL's one-statement submit stamped the roots' ledger rows before the event
    for _ in range(5):
        run_id = store.create_run(plan_run(fan(2), {})).run_id
        found = [(e.type, e.task_id) for e in store.get_events(run_id)]
        assert found == [("run_submitted", None), ("task_queued", "start")]


def test_an_event_recorded_twice_is_kept_once(store: Store) -> None:
    run_id = store.create_run(plan_run(chain(1), {})).run_id
    store.start_attempt(run_id, "t0", 1)

    for _ in range(3):
        assert store.start_attempt(run_id, "t0", 1) is None  # the same delivery, again

    ignored = [e for e in store.get_events(run_id) if e.type == "delivery_ignored"]
    assert [(e.task_id, e.attempt, e.key) for e in ignored] == [("t0", 1, "t0:1:ignored-delivery")]
    keys = [e.key for e in store.get_events(run_id)]
    assert len(keys) == len(set(keys))


def _published(store: Store, run_id: str) -> dict[str, tuple[bool, int]]:
    return {
        d.task_id: (d.published_at is not None, d.publish_count)
        for d in store.get_dispatches(run_id)
    }


def published_now(dispatches: list[Dispatch], ago: float = 0.0) -> list[Published]:
    return [Published(d, time.monotonic() - ago) for d in dispatches]


def test_a_start_marks_what_its_process_published_before_with_when(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(2), {})).run_id
    released = start_and_succeed(store, run_id, "start", 1, "1")
    assert _published(store, run_id)["p0"] == (False, 0)

    store.start_attempt(run_id, "p0", 1, worker="test", published=published_now(released, 5.0))

    assert _published(store, run_id) == {
        "start": (False, 0),  # the caller of this test never marked the root
        "p0": (True, 1),
        "p1": (True, 1),
    }
    # the ledger says when the message went out, not when the mark was written
    started = store.get_tasks(run_id)["p0"].attempts[0].started_at
    published_at = {d.task_id: d.published_at for d in store.get_dispatches(run_id)}
    assert published_at["p0"] == pytest.approx(started - 5.0, abs=1.0)


def test_marking_published_stamps_each_attempt_when_it_went_out_and_counts_it(
    store: Store,
) -> None:
    run_id = store.create_run(plan_run(fan(2), {})).run_id
    released = start_and_succeed(store, run_id, "start", 1, "1")
    p0 = [d for d in released if d.task_id == "p0"]

    store.mark_published(published_now(p0, 5.0))
    assert _published(store, run_id) == {"start": (False, 0), "p0": (True, 1), "p1": (False, 0)}
    finished = store.get_tasks(run_id)["start"].attempts[0].finished_at
    assert finished is not None
    stamped = {d.task_id: d.published_at for d in store.get_dispatches(run_id)}
    assert stamped["p0"] == pytest.approx(finished - 5.0, abs=1.0)

    store.mark_published(published_now(released))  # p0 published a second time, and p1

    assert _published(store, run_id) == {"start": (False, 0), "p0": (True, 2), "p1": (True, 1)}


def test_ledger_marks_left_waiting_are_marked_by_their_thread(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(3), {})).run_id
    released = start_and_succeed(store, run_id, "start", 1, "1")
    marks = LedgerMarks(store, delay=0.05)

    marks.add(published_now(released))

    wait_until(
        lambda: _published(store, run_id)["p2"] == (True, 1),
        timeout=30,
        message="the waiting ledger marks were never written",
    )
    assert marks.take() == []
    assert {t: p for t, p in _published(store, run_id).items() if t != "start"} == {
        "p0": (True, 1),
        "p1": (True, 1),
        "p2": (True, 1),
    }


def test_marks_taken_by_a_failed_start_are_given_back_and_kept(store: Store) -> None:
    run_id = store.create_run(plan_run(fan(2), {})).run_id
    released = start_and_succeed(store, run_id, "start", 1, "1")
    marks = LedgerMarks(store, delay=3600)  # the thread never gets to them in this test
    marks.add(published_now(released))

    taken = marks.take()
    marks.give_back(taken)  # as the executor does when the start's transaction raises

    assert [p.dispatch for p in marks.take()] == released


def test_a_transaction_is_tried_again_while_the_database_fails_transiently(store: Store) -> None:
    tries: list[int] = []

    def work(conn: Connection) -> int:
        tries.append(1)
        if len(tries) < 3:
            raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        return int(conn.execute(text("SELECT 1")).scalar_one())

    assert store._transaction(work) == 1
    assert len(tries) == 3


def test_a_transaction_that_fails_for_good_is_not_tried_again(store: Store) -> None:
    tries: list[int] = []

    def work(conn: Connection) -> None:
        tries.append(1)
        raise IntegrityError("INSERT", {}, ValueError("duplicate key"))

    with pytest.raises(StorageFailure) as failed:
        store._transaction(work)
    assert not failed.value.transient and isinstance(failed.value.__cause__, IntegrityError)
    assert len(tries) == 1
