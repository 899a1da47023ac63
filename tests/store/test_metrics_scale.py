"""A scrape of a store holding 100,000 finished tasks reads indexes, never all history.

The rows are inserted in bulk, as they would be left by runs that ended long ago. The
exporter's first scrape seeds its counters (a read of everything, once); every scrape
after it must read index ranges only: each of its statements' plans is checked (SQLite's
``EXPLAIN QUERY PLAN``, PostgreSQL's ``EXPLAIN ANALYZE``, whose execution times are the
server's time for the scrape, reported with ``-s``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text

from gleitzeit import Settings
from gleitzeit.metrics import StoreCollector
from gleitzeit.store import Store
from gleitzeit.store.engine import engine_for
from gleitzeit.store.tables import attempts, dispatches, events, runs, tasks
from tests.conftest import POSTGRES_ENV
from tests.services import postgres_database, wait_until

RUNS, TASKS_PER_RUN = 1_000, 100
#: tables whose rows grow with history: a scrape may only search them through an index
HISTORY = ("gz_runs", "gz_tasks", "gz_attempts", "gz_dispatches", "gz_events")


@pytest.fixture
def own_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own, on the server the session's store uses."""
    if not database_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'history.db'}"
        return
    with postgres_database(os.environ[POSTGRES_ENV]) as url:
        yield url


def _finished_runs(engine: Engine, first: int, count: int, at: float) -> None:
    """``count`` runs of ``TASKS_PER_RUN`` tasks, each succeeded at ``at``, with their
    attempts, ledger rows and events, inserted in bulk."""
    for i in range(first, first + count):
        run_id = f"run-{i:08d}"
        with engine.begin() as conn:
            _insert_run(conn, run_id, at)


def _insert_run(conn: Any, run_id: str, at: float) -> None:
    conn.execute(
        insert(runs),
        {
            "id": run_id,
            "name": f"history-{hash(run_id) % 5}",
            "key": None,
            "state": "succeeded",
            "graph_hash": "0" * 64,
            "inputs_hash": "0" * 64,
            "tasks_total": TASKS_PER_RUN,
            "tasks_unfinished": 0,
            "tasks_failed": 0,
            "retries": 0,
            "reconcile_failures": 0,
            "created_at": at - 2,
            "updated_at": at,
            "finished_at": at,
        },
    )
    ids = [f"t{j}" for j in range(TASKS_PER_RUN)]
    conn.execute(
        insert(tasks),
        [
            {
                "run_id": run_id,
                "task_id": task_id,
                "name": f"history.task{j % 10}",
                "state": "succeeded",
                "attempt": 1,
                "waiting_on": 0,
                "params": "{}",
                "sources": "[]",
                "children": "[]",
                "options": "{}",
                "result": "1",
                "deliveries": 1,
                "lost": 0,
                "failures": 0,
                "queued_at": at - 1.5,
                "started_at": at - 1,
                "finished_at": at,
                "updated_at": at,
            }
            for j, task_id in enumerate(ids)
        ],
    )
    conn.execute(
        insert(attempts),
        [
            {
                "run_id": run_id,
                "task_id": task_id,
                "attempt": 1,
                "state": "succeeded",
                "worker": "w",
                "started_at": at - 1,
                "finished_at": at,
            }
            for task_id in ids
        ],
    )
    conn.execute(
        insert(dispatches),
        [
            {
                "run_id": run_id,
                "task_id": task_id,
                "attempt": 1,
                "queue": None,
                "countdown": 0.0,
                "created_at": at - 1.5,
                "published_at": at - 1.4,
                "publish_count": 1,
            }
            for task_id in ids
        ],
    )
    conn.execute(
        insert(events),
        [
            {"run_id": run_id, "key": key, "type": type_, "created_at": at}
            for key, type_ in (("run:submitted", "run_submitted"), ("run:0:ok", "run_succeeded"))
        ],
    )


class Statements:
    """The statements an engine runs while ``on``, with their parameters and times."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.on = False
        self.seen: list[tuple[str, Any, float]] = []
        self._began = 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self._began = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self.on and statement.lstrip().upper().startswith("SELECT"):
            self.seen.append((statement, parameters, time.perf_counter() - self._began))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)


def _sqlite_plan(engine: Engine, statement: str, parameters: Any) -> tuple[list[str], float]:
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        began = time.perf_counter()
        conn.exec_driver_sql(statement, parameters).all()
        took = time.perf_counter() - began
    return [str(row[-1]) for row in plan], took


def _pg_plan(engine: Engine, statement: str, parameters: Any) -> tuple[list[str], float]:
    with engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = auto")
        found = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
        ).scalar_one()
    (top,) = json.loads(found) if isinstance(found, str) else found
    steps: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        relation = node.get("Relation Name")
        steps.append(f"{node['Node Type']} {relation or ''} {node.get('Index Name', '')}")
        for child in node.get("Plans", []):
            walk(child)

    walk(top["Plan"])
    return steps, (top["Planning Time"] + top["Execution Time"]) / 1000


def _reads_all_of(step: str, dialect: str) -> bool:
    """A step of a plan that reads a whole table of history (or a whole index of one)."""
    if not any(table in step.split() for table in HISTORY):
        return False
    if dialect == "sqlite":
        return step.startswith("SCAN")
    return (step.startswith(("Seq Scan", "Index Only Scan", "Index Scan")) and False) or (
        step.startswith("Seq Scan")
    )


def test_a_scrape_of_100000_finished_tasks_reads_indexes_only(own_database_url: str) -> None:
    url = own_database_url
    store = Store.open(url)
    engine = engine_for(url)
    dialect = engine.dialect.name
    began = time.perf_counter()
    _finished_runs(engine, 0, RUNS, at=time.time() - 3600)
    inserted = time.perf_counter() - began
    if dialect == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))  # what autovacuum does to tables this size
    store.record_reconcile_pass({"republish": 1}, 0, host="h", pid=1)
    store.register_process("celery@h", "worker", host="h", pid=2, tasks=["history.task0"])

    collector = StoreCollector(Settings(database_url=url, metrics_settle_seconds=0.2))
    list(collector.collect())  # the seed: every row once
    seed_seconds = collector.last_read_seconds
    # one more run ends after the seed (its message went out 1.4 s before it ended): the
    # scrapes find it in their window once it is older than the settle time
    _finished_runs(engine, RUNS, 1, at=time.time() + 1.5)

    statements = Statements(engine)
    try:

        def scraped() -> dict[str, float] | None:
            statements.seen.clear()
            statements.on = True
            families = list(collector.collect())
            statements.on = False
            samples = {
                sample.name: sample.value
                for family in families
                for sample in family.samples
                if not sample.labels or sample.name.endswith("_count")
            }
            ended = sum(
                sample.value
                for family in families
                for sample in family.samples
                if sample.name == "gleitzeit_task_attempts_total"
            )
            return samples if ended == (RUNS + 1) * TASKS_PER_RUN else None

        samples = wait_until(scraped, timeout=60, message="the last run never counted")
    finally:
        statements.close()

    assert samples["gleitzeit_store_up"] == 1
    assert samples["gleitzeit_dispatches_total"] == (RUNS + 1) * TASKS_PER_RUN
    assert (
        sum(v for name, v in samples.items() if name == "gleitzeit_task_duration_seconds_count") > 0
    )
    wall = collector.last_read_seconds
    plan_of = _sqlite_plan if dialect == "sqlite" else _pg_plan
    server = 0.0
    misread, plans = [], []
    for statement, parameters, _took in statements.seen:
        steps, took = plan_of(engine, statement, parameters)
        server += took
        plans.append(f"  {took * 1000:6.2f} ms  {' / '.join(step.strip() for step in steps)}")
        if any(_reads_all_of(step, dialect) for step in steps):
            misread.append(f"{' '.join(statement.split())}\n    plan: {' / '.join(steps)}")
    print(
        f"\n{dialect}: {RUNS * TASKS_PER_RUN:,} finished tasks inserted in {inserted:.1f} s; "
        f"seed scrape {seed_seconds * 1000:.1f} ms; a scrape: {len(statements.seen)} statements,"
        f" {server * 1000:.1f} ms of server time (EXPLAIN ANALYZE on PostgreSQL, the"
        f" statements' own time on SQLite), {wall * 1000:.1f} ms wall in the exporter\n"
        + "\n".join(plans)
    )
    assert len(statements.seen) >= 8
    assert not misread, "a scrape read all of a table of history:\n" + "\n".join(misread)
