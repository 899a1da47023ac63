"""Tasks for the benchmarks (``scripts/bench.py``): no-ops as plain
Celery tasks, as gleitzeit tasks, celery-dyrygent's workflow processor, and a statement counter.

The worker imports this module (``celery -A gleitzeit.worker worker -I scripts.bench_tasks``);
``shared_task`` and ``gleitzeit.task`` both register on the worker's app. Names are explicit so
that the benchmark finds them whatever this module is imported as. The functions are registered
by calling the decorators (not with ``@``) so that they keep their types for mypy.

With ``BENCH_COUNT_SQL=1`` in the worker's environment, every SQL statement and every commit of
any SQLAlchemy engine in the worker's processes is counted (a ``before_cursor_execute`` and a
``commit`` listener on the ``Engine`` class), and so is every statement the store runs on
psycopg directly (``gleitzeit.store.direct.listen``: a task's start and success on PostgreSQL,
each in autocommit, so each also counts as a commit), into counters in shared memory that the
prefork children inherit; the plain task ``bench.sql_count`` returns their totals.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from celery import shared_task

import gleitzeit

PLAIN_NOOP = "bench.plain_noop"
PLAIN_STEP = "bench.plain_step"
PLAIN_JOIN = "bench.plain_join"
SQL_COUNT = "bench.sql_count"
GZ_START = "bench.gz_start"
GZ_NOOP = "bench.gz_noop"
GZ_STEP = "bench.gz_step"
GZ_JOIN = "bench.gz_join"
#: celery-dyrygent's default name for its workflow processor task
DYRYGENT_PROCESSOR = "workflow-processor"

#: set to "1" in the worker's environment to count SQL statements and commits
COUNT_SQL_ENV = "BENCH_COUNT_SQL"


def _plain_noop(i: int) -> int:
    """The plain Celery no-op: return the argument."""
    return i


def _plain_step(x: int) -> int:
    """One hop of a plain chain: the previous result plus one."""
    return x + 1


def _plain_join(values: list[int]) -> int:
    """A plain chord body: the sum of the header's results."""
    return sum(values)


def _gz_start() -> int:
    """The root of a fan-out."""
    return 0


def _gz_noop(i: int) -> int:
    """A gleitzeit no-op: return the argument (the same work as ``plain_noop``)."""
    return i


def _gz_step(x: int) -> int:
    """One hop of a gleitzeit chain: the previous result (by reference) plus one."""
    return x + 1


def _gz_join(values: list[int]) -> int:
    """The fan-in: every fanned-out result arrives here by reference."""
    return sum(values)


plain_noop = shared_task(name=PLAIN_NOOP)(_plain_noop)
plain_step = shared_task(name=PLAIN_STEP)(_plain_step)
plain_join = shared_task(name=PLAIN_JOIN)(_plain_join)
gz_start = gleitzeit.task(name=GZ_START)(_gz_start)
gz_noop = gleitzeit.task(name=GZ_NOOP)(_gz_noop)
gz_step = gleitzeit.task(name=GZ_STEP)(_gz_step)
gz_join = gleitzeit.task(name=GZ_JOIN)(_gz_join)


# ------------------------------------------------------------------- counting SQL statements


class SqlCounter:
    """Statements and commits of every engine in this process and its forked children."""

    def __init__(self) -> None:
        # Allocated before the prefork pool forks, so every child adds to the same memory.
        self.statements = multiprocessing.Value("q", 0)
        self.commits = multiprocessing.Value("q", 0)

    def install(self) -> None:
        from sqlalchemy import Engine, event

        from gleitzeit.store import direct

        event.listen(Engine, "before_cursor_execute", self._on_statement)
        event.listen(Engine, "commit", self._on_commit)
        direct.listen(self._on_direct_statement)

    def _on_statement(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        # SQLite's explicit "BEGIN IMMEDIATE" is a statement; PostgreSQL's implicit BEGIN is
        # not. Leaving it out keeps the two stores comparable.
        if not statement.startswith("BEGIN"):
            self._count(self.statements)

    def _on_commit(self, _conn: Any) -> None:
        self._count(self.commits)

    def _on_direct_statement(self, _statement: str) -> None:
        # in autocommit: a transaction of its own
        self._count(self.statements)
        self._count(self.commits)

    @staticmethod
    def _count(counter: Any) -> None:
        with counter.get_lock():
            counter.value += 1

    def totals(self) -> dict[str, int]:
        return {"statements": self.statements.value, "commits": self.commits.value}


_counter: SqlCounter | None = None
if os.environ.get(COUNT_SQL_ENV) == "1":
    _counter = SqlCounter()
    _counter.install()


def _sql_count() -> dict[str, int] | None:
    """Statements and commits counted so far in the worker (None when counting is off)."""
    return None if _counter is None else _counter.totals()


sql_count = shared_task(name=SQL_COUNT)(_sql_count)


# ------------------------------------------------------------------------- celery-dyrygent


def _register_dyrygent() -> Any:
    """celery-dyrygent's processor as a shared task (its README's register_workflow_processor,
    with the same name and options, but on every app instead of one)."""
    try:
        from celery_dyrygent.tasks import workflow_processor
        from celery_dyrygent.workflows import Workflow
    except ImportError:
        return None
    processor = shared_task(name=DYRYGENT_PROCESSOR, bind=True, max_retries=1)(workflow_processor)
    Workflow.set_workflow_processor_task(processor)
    return processor


dyrygent_processor_task = _register_dyrygent()
