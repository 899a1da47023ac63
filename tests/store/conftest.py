"""Every store test also checks how SQLite runs the store's statements on one run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from gleitzeit.store import Store

#: indexes on a task's state: for the sweep, which looks across runs
STATE_INDEXES = ("ix_gz_tasks_state_updated", "ix_gz_tasks_state_lease")


@pytest.fixture(autouse=True)
def statements_on_one_run_read_by_primary_key(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if SQLite served a statement on one run's tasks from a state index.

    Without statistics, SQLite's planner may read ``state = 'pending'`` from an index on
    the state: every pending task of every run in the store, where the primary key
    (run, task) finds the few rows the statement means. Such a statement costs more the
    more other runs there are, unseen in a test's small store; its plan shows it at once.
    Only for tests on the session's ``store`` (asked for here, it would run every test of
    this directory once per store).
    """
    if "store" not in request.fixturenames:
        yield
        return
    store: Store = request.getfixturevalue("store")
    if store.engine.dialect.name != "sqlite":
        yield
        return
    misread: list[str] = []

    def check_plan(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if "gz_tasks.run_id = ?" not in statement or statement.startswith("EXPLAIN"):
            return
        first = parameters[0] if executemany else parameters
        plan = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, first).fetchall()
        steps = " / ".join(str(row[-1]) for row in plan)
        if any(index in steps for index in STATE_INDEXES):
            misread.append(f"{' '.join(statement.split())}\n    plan: {steps}")

    event.listen(store.engine, "before_cursor_execute", check_plan)
    try:
        yield
    finally:
        event.remove(store.engine, "before_cursor_execute", check_plan)
    assert not misread, "statements on one run read a state index:\n" + "\n".join(misread)
