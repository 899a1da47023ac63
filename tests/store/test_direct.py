"""A submit, a task's start and its success on PostgreSQL, against a real server: run on
psycopg directly (``gleitzeit.store.direct``), with a connection the server dropped, a
server that cannot be reached and a statement that fails for good; the success's lazy
commit and its confirmation on disk (``Store.confirm_success``), also when the server lost
it; a submit writes what the general path writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DataError, OperationalError

from gleitzeit import IdempotencyConflict, StorageFailure, TaskState
from gleitzeit.client import plan_run
from gleitzeit.store import Store, direct, statements
from gleitzeit.store.direct import DirectStatements
from gleitzeit.store.engine import make_engine
from gleitzeit.store.records import Recorded
from gleitzeit.store.tables import dispatches, events, run_definitions, runs, tasks
from tests.conftest import postgres_admin_url
from tests.services import free_port, postgres_database
from tests.store.test_store import chain, fan

DEADLINE_SECONDS = 10.0


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    with postgres_database(postgres_admin_url()) as url:
        store = Store.open(url)
        try:
            yield store
        finally:
            store.engine.dispose()


def _backend_of_pooled_connection(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(store: Store, pid: int) -> None:
    """End the server process ``pid`` from another connection; return once it is gone."""
    url = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + DEADLINE_SECONDS
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.01)


def _direct_on_one_connection(store: Store) -> tuple[DirectStatements, int]:
    """The store's direct statements, its pool emptied and one connection made: that
    connection's server process."""
    assert store.direct is not None
    store.engine.dispose()
    return store.direct, _backend_of_pooled_connection(store)


def test_a_success_whose_connection_the_server_dropped_is_recorded_on_a_new_one(
    postgres_store: Store,
) -> None:
    store = postgres_store
    assert store.direct is not None
    run_id = store.create_run(plan_run(chain(2), {})).run_id
    store.engine.dispose()  # one connection in the pool from here: the start's
    assert store.start_attempt(run_id, "t0", 1, worker="test") is not None
    dropped = _backend_of_pooled_connection(store)
    _terminate(store, dropped)

    recorded = store.record_success(run_id, "t0", 1, "0")

    assert recorded.recorded and [d.task_id for d in recorded.dispatches] == ["t1"]
    assert store.get_tasks(run_id)["t0"].state is TaskState.SUCCEEDED
    assert _backend_of_pooled_connection(store) != dropped


def test_a_statement_that_fails_for_good_is_raised_once_and_its_connection_thrown_away(
    postgres_store: Store,
) -> None:
    store = postgres_store
    direct, used = _direct_on_one_connection(store)
    tries: list[int] = []

    def divide() -> object:
        tries.append(1)
        return direct.run(text("SELECT 1 / :zero AS ratio"), {"zero": 0})

    with pytest.raises(StorageFailure) as failed:
        store._retried(divide)

    assert not failed.value.transient and isinstance(failed.value.__cause__, DataError)
    assert isinstance(failed.value.__cause__.orig, psycopg.errors.DivisionByZero)
    assert len(tries) == 1
    assert _backend_of_pooled_connection(store) != used
    assert [row.ratio for row in direct.run(text("SELECT 2 / :two AS ratio"), {"two": 2})] == [1]


class Interrupted(BaseException):
    """Raised in the middle of a statement, as a time limit's exception or a signal's is."""


def test_a_statement_interrupted_midway_does_not_give_its_connection_back(
    postgres_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = postgres_store
    direct, used = _direct_on_one_connection(store)

    def interrupt(_cursor: object) -> object:
        raise Interrupted  # once the statement ran, before its connection leaves autocommit

    monkeypatch.setattr(direct, "_rows", interrupt)
    with pytest.raises(Interrupted):
        direct.run(text("SELECT 1 AS one"), {})
    monkeypatch.undo()

    with store.engine.connect() as conn:
        assert not conn.connection.driver_connection.autocommit  # type: ignore[union-attr]
    assert _backend_of_pooled_connection(store) != used


def test_a_server_that_cannot_be_reached_is_a_transient_failure_tried_again() -> None:
    # nothing listens on the port: every connection is refused, by the pool's connect
    store = Store(make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/none"))
    store.retry_seconds = 0.3
    direct = store.direct
    assert direct is not None
    tries: list[int] = []

    def select() -> object:
        tries.append(1)
        return direct.run(text("SELECT 1"), {})

    with pytest.raises(StorageFailure) as failed:
        store._retried(select)

    assert failed.value.transient and isinstance(failed.value.__cause__, OperationalError)
    assert len(tries) > 1


# -- a success's commit does not wait for the disk; confirm_success does ---------------------


def _run_with_its_root_started(store: Store) -> str:
    """A run of ``start`` and two children, ``start``'s first attempt running."""
    run_id = store.create_run(plan_run(fan(2), {})).run_id
    assert store.start_attempt(run_id, "start", 1, worker="test") is not None
    return run_id


def test_a_success_is_confirmed_on_disk_before_its_message_is_acknowledged(
    postgres_store: Store,
) -> None:
    store = postgres_store
    run_id = _run_with_its_root_started(store)

    recorded = store.record_success(run_id, "start", 1, "1")
    confirmed = store.confirm_success(run_id, "start", 1, "1")

    assert recorded.recorded and not recorded.durable
    assert sorted(d.task_id for d in recorded.dispatches) == ["p0", "p1"]
    assert confirmed == Recorded(True)  # nothing more to publish
    assert store.get_tasks(run_id)["start"].state is TaskState.SUCCEEDED


def test_a_success_the_server_lost_is_recorded_again_when_confirmed(postgres_store: Store) -> None:
    # A crash of the server between the success's commit and its confirmation can take the
    # success with the last WAL: the whole transaction, so the run is as if it had never
    # been recorded. That state, made here by not recording it:
    store = postgres_store
    run_id = _run_with_its_root_started(store)

    confirmed = store.confirm_success(run_id, "start", 1, "1")

    assert confirmed.recorded and confirmed.durable
    assert sorted(d.task_id for d in confirmed.dispatches) == ["p0", "p1"]
    tasks = store.get_tasks(run_id)
    assert tasks["start"].state is TaskState.SUCCEEDED and tasks["start"].result == 1
    assert {tasks[t].state for t in ("p0", "p1")} == {TaskState.QUEUED}


def test_a_confirmation_whose_connection_the_server_dropped_is_tried_on_a_new_one(
    postgres_store: Store,
) -> None:
    store = postgres_store
    run_id = _run_with_its_root_started(store)
    store.engine.dispose()
    recorded = store.record_success(run_id, "start", 1, "1")
    _terminate(store, _backend_of_pooled_connection(store))

    confirmed = store.confirm_success(run_id, "start", 1, "1")

    assert recorded.recorded and confirmed == Recorded(True)
    assert store.get_tasks(run_id)["start"].state is TaskState.SUCCEEDED
    # recorded once: no second release of the children, no ignored outcome in the history
    assert {d.task_id: d.attempt for d in store.get_dispatches(run_id)} == {
        "start": 1,
        "p0": 1,
        "p1": 1,
    }
    assert not [e for e in store.get_events(run_id) if e.type == "outcome_ignored"]


def test_a_success_lost_after_its_attempt_was_given_up_on_is_not_recorded(
    postgres_store: Store,
) -> None:
    store = postgres_store
    run_id = _run_with_its_root_started(store)
    store.attempt_lost(run_id, "start", 1, reason="the test's worker is gone", max_lost=3)

    confirmed = store.confirm_success(run_id, "start", 1, "1")

    assert confirmed == Recorded(False)
    start = store.get_tasks(run_id)["start"]
    assert start.state is TaskState.RETRYING and start.attempt == 2  # a new attempt, not it


def _stored(store: Store, run_id: str) -> dict[str, list[dict[str, object]]]:
    """Every row of the run, without what differs between two submits of one plan (its id,
    its key, the times)."""
    differs = {"id", "run_id", "key", "created_at", "updated_at", "queued_at", "data"}
    found: dict[str, list[dict[str, object]]] = {}
    with store.engine.connect() as conn:
        for table in (runs, run_definitions, tasks, events, dispatches):
            column = table.c.id if table is runs else table.c.run_id
            rows = conn.execute(select(table).where(column == run_id)).mappings()
            kept = [{k: v for k, v in row.items() if k not in differs} for row in rows]
            found[table.name] = sorted(kept, key=repr)
    return found


def test_a_submit_in_one_statement_writes_what_the_general_path_writes(
    postgres_store: Store,
) -> None:
    store = postgres_store
    workflow = fan(3)
    seen: list[str] = []
    direct.listen(seen.append)
    try:
        one = store.create_run(plan_run(workflow, {}, key="one"))
    finally:
        direct.remove(seen.append)
    assert seen == [str(statements.PG_CREATE_RUN.compile(dialect=store.engine.dialect))]
    store.direct, kept = None, store.direct
    try:
        general = store.create_run(plan_run(workflow, {}, key="general"))
    finally:
        store.direct = kept

    assert one.created and [(d.task_id, d.attempt) for d in one.dispatches] == [("start", 1)]
    assert one.dispatches == [replace(d, run_id=one.run_id) for d in general.dispatches]
    assert _stored(store, one.run_id) == _stored(store, general.run_id)
    assert store.get_tasks(one.run_id)["start"].state is TaskState.QUEUED
    with store.engine.connect() as conn:
        queued = conn.execute(
            select(tasks.c.task_id).where(
                tasks.c.run_id == one.run_id, tasks.c.queued_at.is_not(None)
            )
        ).scalars()
        assert list(queued) == ["start"]


def test_a_key_submitted_again_names_its_run_and_writes_nothing(postgres_store: Store) -> None:
    store = postgres_store
    first = store.create_run(plan_run(chain(2), {"n": 1}, key="report"))

    again = store.create_run(plan_run(chain(2), {"n": 1}, key="report"))
    with pytest.raises(IdempotencyConflict, match="inputs"):
        store.create_run(plan_run(chain(2), {"n": 2}, key="report"))

    assert (again.run_id, again.created, again.dispatches) == (first.run_id, False, [])
    assert [run.id for run in store.list_runs()] == [first.run_id]
    assert len(store.get_dispatches(first.run_id)) == 1
