"""SQLite's write lock as the engine takes it: waiting in short pauses, giving up cleanly."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from gleitzeit import RunState, Workflow
from gleitzeit.client import plan_run
from gleitzeit.store import Store
from gleitzeit.store.engine import begin_immediate


def _hold_writer(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_write_waits_for_the_lock_another_connection_holds(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    wf = Workflow("one")
    wf.task("t0", "tests.value", params={"value": 1})
    holder = _hold_writer(path)
    released = threading.Event()

    def release() -> None:
        holder.execute("ROLLBACK")
        released.set()

    timer = threading.Timer(0.3, release)
    timer.start()
    try:
        run_id = store.create_run(plan_run(wf, {})).run_id
    finally:
        timer.join()
        holder.close()

    assert released.is_set()
    assert store.get_run(run_id).state is RunState.RUNNING


def test_a_write_lock_never_freed_fails_as_a_busy_database(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store.open(f"sqlite:///{path}")
    holder = _hold_writer(path)
    waiting = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            begin_immediate(waiting, timeout=0.2)
        # the connection is left as it was: no transaction, the busy timeout restored
        assert not waiting.in_transaction
        assert waiting.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    finally:
        waiting.close()
        holder.execute("ROLLBACK")
        holder.close()
