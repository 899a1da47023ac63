"""A task's start and success on PostgreSQL, run on psycopg directly (``gleitzeit.store.direct``),
against a real server: a connection the server dropped and a statement that fails for good."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError

from gleitzeit import StorageFailure, TaskState
from gleitzeit.client import plan_run
from gleitzeit.store import Store
from gleitzeit.store.engine import make_engine
from tests.conftest import POSTGRES_ENV
from tests.services import free_port, postgres_database
from tests.store.test_store import chain

DEADLINE_SECONDS = 10.0


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against")
    with postgres_database(admin_url) as url:
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
    direct = store.direct
    assert direct is not None
    store.engine.dispose()
    used = _backend_of_pooled_connection(store)
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
