"""The SQL schema (SQLAlchemy Core). Changes ship as Alembic migrations beside it.

Times are seconds since the epoch as floats, taken from the database's clock
(:class:`db_now`), so that every process judges staleness by one clock.
JSON values are stored as text that gleitzeit encodes itself, to control size limits
and keep pickle out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    or_,
    text,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from gleitzeit.states import TaskState, task_sources

metadata = MetaData()

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id
_EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class db_now(FunctionElement[float]):
    """The database's current time in epoch seconds, with sub-millisecond precision."""

    type = Float()
    inherit_cache = True


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return "extract(epoch from clock_timestamp())::float8"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


class db_statement_now(FunctionElement[float]):
    """The database's time in epoch seconds, one value for the whole statement, so that
    an index can serve a comparison with it (PostgreSQL: the transaction's start, since
    ``clock_timestamp()`` is volatile and is compared row by row)."""

    type = Float()
    inherit_cache = True


@compiles(db_statement_now, "postgresql")
def _pg_statement_now(element: db_statement_now, compiler: Any, **kw: Any) -> str:
    return "extract(epoch from now())::float8"


@compiles(db_statement_now, "sqlite")
def _sqlite_statement_now(element: db_statement_now, compiler: Any, **kw: Any) -> str:
    # 'now' is one value for the whole statement in SQLite
    return "((julianday('now') - 2440587.5) * 86400.0)"


runs = Table(
    "gz_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key", String(255), nullable=True, unique=True),
    Column("state", String(16), nullable=False),
    Column("graph_hash", String(64), nullable=False),
    Column("inputs_hash", String(64), nullable=False),
    Column("tasks_total", Integer, nullable=False),
    Column("tasks_unfinished", Integer, nullable=False),
    Column("tasks_failed", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    # workflow-level retries of this run so far; its run-level events carry the number
    Column("retries", Integer, nullable=False, default=0, server_default="0"),
    # reconciliation of this run that failed in a row, and when it is tried again
    Column("reconcile_failures", Integer, nullable=False, default=0, server_default="0"),
    Column("reconcile_after", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # not updated_at: the per-task update of the run row stays HOT on PostgreSQL (0004)
    Index("ix_gz_runs_state", "state"),
    Index("ix_gz_runs_name_created", "name", "created_at"),
)

#: what a run was submitted with, written at submit and by a retry that changes it: kept
#: out of gz_runs, whose row every finished task updates, because SQLite rewrites a whole
#: row on update, however large its graph (migration 0005). The inputs, which every
#: attempt's start reads, come before the graph: SQLite reaches a column after a large
#: value only through all of that value's pages (migration 0007)
run_definitions = Table(
    "gz_run_definitions",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("inputs", Text, nullable=False),
    Column("graph", Text, nullable=False),
)

tasks = Table(
    "gz_tasks",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("task_id", String(200), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    # the attempt the task is on; 0 until first claimed (the fencing token)
    Column("attempt", Integer, nullable=False, default=0),
    # parents not yet succeeded; the task is claimed when this reaches 0
    Column("waiting_on", Integer, nullable=False),
    Column("params", Text, nullable=False),
    # tasks whose results the params reference, and the tasks that depend on this one
    Column("sources", Text, nullable=False),
    Column("children", Text, nullable=False),
    Column("options", Text, nullable=False),
    Column("result", Text, nullable=True),
    Column("error_type", String(255), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("deliveries", Integer, nullable=False, default=0),
    # attempts whose worker vanished while running them (a poison task ends failed)
    Column("lost", Integer, nullable=False, default=0, server_default="0"),
    # attempts that failed by the task's own error since the run (re)started it: these,
    # not attempt numbers (a re-dispatch or resume makes a new attempt), count against
    # its retries
    Column("failures", Integer, nullable=False, default=0, server_default="0"),
    # a running attempt's worker is presumed gone once this passes (renewed by heartbeat)
    Column("lease_until", Float, nullable=True),
    Column("queued_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Index("ix_gz_tasks_state_updated", "state", "updated_at"),
    Index("ix_gz_tasks_state_lease", "state", "lease_until"),
)

attempts = Table(
    "gz_attempts",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("task_id", String(200), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("worker", String(255), nullable=True),
    # the machine and process that ran the attempt, to tell a vanished one
    Column("host", String(255), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("error_type", String(255), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # the metrics exporter reads the attempts ended since its last scrape (0009); partial:
    # an attempt's start inserts no entry, only its end does (one index write per attempt)
    Index(
        "ix_gz_attempts_finished",
        "finished_at",
        sqlite_where=text("finished_at IS NOT NULL"),
        postgresql_where=text("finished_at IS NOT NULL"),
    ),
)

# The dispatch ledger and outbox: one row per (run, task, attempt), written in the
# transaction that claims the attempt, so an attempt can never be dispatched twice.
dispatches = Table(
    "gz_dispatches",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("task_id", String(200), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("queue", String(255), nullable=True),
    Column("countdown", Float, nullable=False, default=0.0),
    Column("created_at", Float, nullable=False),
    Column("published_at", Float, nullable=True),
    Column("publish_count", Integer, nullable=False, default=0),
    # when a reconciler took this unpublished row to publish it again
    Column("claimed_at", Float, nullable=True),
    Index("ix_gz_dispatches_unpublished", "published_at", "created_at"),
)

events = Table(
    "gz_events",
    metadata,
    Column("id", _EVENT_ID, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    # stable identity of the event within its run: recording it twice is a no-op
    Column("key", String(255), nullable=False),
    Column("type", String(32), nullable=False),
    Column("task_id", String(200), nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("data", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("run_id", "key", name="uq_gz_events_run_key"),
    Index("ix_gz_events_run_id", "run_id", "id"),
)

#: the processes of a deployment, each as it was last seen: one row per worker (by its
#: Celery hostname) and one for the reconciler; health checks and metrics read them (0009)
processes = Table(
    "gz_processes",
    metadata,
    Column("name", String(255), primary_key=True),
    #: ``worker`` or ``reconciler``
    Column("kind", String(16), nullable=False),
    Column("host", String(255), nullable=True),
    Column("pid", Integer, nullable=True),
    # a worker's registered task names (JSON list)
    Column("tasks", Text, nullable=True),
    # the reconciler's counts (JSON object): its repairs by kind, stuck runs of its last pass
    Column("details", Text, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Index("ix_gz_processes_kind_seen", "kind", "last_seen"),
)

#: schedules (``client.schedule``): a workflow, in its data form, fired at the slots of a
#: cron expression. ``next_slot`` is the earliest slot not fired yet (epoch seconds); a
#: tick claims it by moving it on, conditional on the value it read (migration 0008)
schedules = Table(
    "gz_schedules",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("cron", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("graph", Text, nullable=False),
    Column("graph_hash", String(64), nullable=False),
    Column("inputs", Text, nullable=False),
    Column("inputs_hash", String(64), nullable=False),
    Column("catchup", Boolean, nullable=False),
    # the runs' keys are "<key_prefix>:<slot's ISO time>"
    Column("key_prefix", String(200), nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("next_slot", Float, nullable=False),
    Column("last_slot", Float, nullable=True),
    Column("last_run_id", String(36), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # a tick with nothing due is one search of this index
    Index("ix_gz_schedules_due", "paused", "next_slot"),
)


def state_in(states: Iterable[str]) -> Any:
    """A condition on one run's tasks: the task's state is one of ``states``.

    It compares ``state || ''``, which no index on the state can serve: the rows of a
    statement on one run are found by the primary key (run, task), never through an index
    on the state, which holds the tasks of every run. SQLite's planner, without statistics,
    chose the state's index for ``run_id = ? AND state = 'pending'`` and for a list of task
    ids with a state: every pending task in the store read, for each such statement.
    Only the sweep, which looks across runs, compares ``tasks.c.state`` itself.

    ``state = 'a' OR state = 'b'`` rather than ``IN``: SQLAlchemy expands an ``IN`` list
    anew at every execution, plain parameters keep a statement's compiled form as it is.
    """
    state = tasks.c.state.concat("")
    return or_(*(state == value for value in states))


def attempt_key(table: Table, run_id: Any, task_id: Any, attempt: Any) -> list[Any]:
    """``WHERE`` clauses naming one attempt in ``table`` (values or bound parameters)."""
    return [table.c.run_id == run_id, table.c.task_id == task_id, table.c.attempt == attempt]


def on_attempt(run_id: Any, task_id: Any, attempt: Any, states: Sequence[str]) -> list[Any]:
    """``WHERE`` clauses: the task is on ``attempt`` (the fencing token) in one of ``states``."""
    return [*attempt_key(tasks, run_id, task_id, attempt), state_in(states)]


def id_list(values: Iterable[str]) -> list[str]:
    """The distinct ids of ``values``, sorted: one parameter list however they came."""
    return sorted(set(values))


def move(run_id: str, task_id: str, attempt: int, new: TaskState) -> Any:
    """The one conditional ``UPDATE`` by which an attempt changes state.

    It matches only while the task is on ``attempt`` (the fencing token) and in a state
    the transition table allows to move to ``new``; its row count says whether it did.
    """
    return (
        update(tasks)
        .where(*on_attempt(run_id, task_id, attempt, task_sources(new)))
        .values(state=new.value, updated_at=db_now())
    )
