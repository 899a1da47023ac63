"""The store's operations. Each public method is one transaction.

Claims and idempotency rest on the database's own atomicity: a task moves only by a
conditional ``UPDATE ... WHERE state IN (...) AND attempt = :a``, whose row count says
who won; a parent's success decrements ``waiting_on`` of its children in the same
transaction that records it, and the child is claimed by the one transaction that sees
the counter reach zero; dispatch rows and events have unique keys.
``SQLAlchemyError`` leaves this module as :class:`StorageFailure`, cause kept; passing
errors (a lost connection, SQLite busy, a PostgreSQL deadlock) are retried first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from gleitzeit import codec
from gleitzeit.errors import IdempotencyConflict, StorageFailure, StoreNotReady
from gleitzeit.policy import Backoff
from gleitzeit.schedules import Cron
from gleitzeit.settings import Settings
from gleitzeit.states import (
    RunState,
    TaskState,
    task_moves,
)
from gleitzeit.store import (
    control,
    direct,
    failures,
    processes,
    reads,
    recovery,
    schedules,
    statements,
    steps,
    sweep,
)
from gleitzeit.store.engine import engine_for, masked_url
from gleitzeit.store.migrate import current_revision, ensure_schema, head_revision
from gleitzeit.store.records import (
    DispatchRecord,
    DueSchedule,
    ErrorInfo,
    EventRecord,
    FinishedTask,
    FiredSlots,
    Holder,
    Published,
    Recorded,
    Repair,
    RunPlan,
    RunProgress,
    RunRecord,
    ScheduleDefinition,
    ScheduleRecord,
    StartedAttempt,
    StuckRun,
    Submitted,
    TaskRecord,
    TaskStatus,
    message_id,
)
from gleitzeit.store.tables import (
    attempt_key,
    attempts,
    db_now,
    on_attempt,
    run_definitions,
    runs,
    state_in,
    tasks,
)
from gleitzeit.workflow import ON_FAILURE_BLOCK, alternative_of

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_RETRY_SECONDS = 30.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


def _storage_failure(exc: SQLAlchemyError) -> StorageFailure:
    return StorageFailure(f"store operation failed: {exc}", transient=_is_transient(exc))


def _open_failure(engine: Engine, doing: str, exc: SQLAlchemyError) -> StorageFailure:
    """Why the store at ``engine`` could not be opened: unreachable, or ``doing`` failed."""
    where = masked_url(str(engine.url))
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if _is_transient(exc):
        return StorageFailure(f"cannot reach the store at {where}: {reason}", transient=True)
    return StorageFailure(f"cannot {doing} the store at {where}: {reason}")


def _missing_sqlite_file(engine: Engine) -> str | None:
    """The path of a SQLite store's file that does not exist (connecting would create it)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.query.get("mode"):
        return None
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if os.path.exists(path) else path


class Store:
    """gleitzeit's state in SQL: runs, tasks, attempts, the dispatch ledger, history."""

    _migrated: set[int] = set()

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.retry_seconds = retry_seconds
        #: the statements of every task on PostgreSQL (start, success, its confirmation on
        #: disk, a ledger mark on its own) and of a submit, run on the driver's connection
        #: (``direct``); None on SQLite, where the general path runs them
        self.direct = direct.DirectStatements(engine) if direct.supported(engine) else None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> Store:
        """The store at ``url`` on this process's engine, its schema brought up to date.

        ``lease_seconds``: how long a started attempt is presumed alive without a renewal;
        ``retry_seconds``: how long an operation retries an unreachable or locked database.
        """
        engine = engine_for(url)
        if migrate and id(engine) not in cls._migrated:
            try:
                ensure_schema(engine)
            except SQLAlchemyError as exc:
                raise _open_failure(engine, "migrate", exc) from exc
            cls._migrated.add(id(engine))
        return cls(engine, lease_seconds=lease_seconds, retry_seconds=retry_seconds)

    @classmethod
    def open_existing(
        cls,
        url: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> Store:
        """The store at ``url`` as it is, for looking: never created, never migrated.

        Raises :class:`StoreNotReady` when there is no store at ``url`` or its schema is
        not the newest, and a transient :class:`StorageFailure` when the database cannot
        be reached; the schema is read once, without retrying, since someone is waiting
        for the answer (later operations retry as usual).
        """
        engine = engine_for(url)
        where = masked_url(str(engine.url))
        missing = _missing_sqlite_file(engine)
        if missing is not None:
            raise StoreNotReady(
                f"no store at {where} ({os.path.abspath(missing)} does not exist): create it with "
                "'gleitzeit db upgrade', or name yours with GLEITZEIT_DATABASE_URL"
            )
        if id(engine) not in cls._migrated:
            try:
                current, head = current_revision(engine), head_revision(engine)
            except SQLAlchemyError as exc:
                raise _open_failure(engine, "read", exc) from exc
            if current != head:
                state = (
                    "has no gleitzeit tables"
                    if current is None
                    else f"has schema revision {current}, this gleitzeit needs {head}"
                )
                raise StoreNotReady(
                    f"the store at {where} {state}: run 'gleitzeit db upgrade' on it"
                )
        return cls(engine, lease_seconds=lease_seconds, retry_seconds=retry_seconds)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, migrate: bool = True, existing: bool = False
    ) -> Store:
        """The store ``settings`` name, with their lease and retry durations; with
        ``existing``, as :meth:`open_existing` opens it (never created or migrated)."""
        if existing:
            return cls.open_existing(
                settings.database_url,
                lease_seconds=settings.lease_seconds,
                retry_seconds=settings.storage_retry_seconds,
            )
        return cls.open(
            settings.database_url,
            migrate=migrate,
            lease_seconds=settings.lease_seconds,
            retry_seconds=settings.storage_retry_seconds,
        )

    @property
    def location(self) -> str:
        """The store's URL with its password masked, for messages."""
        return masked_url(str(self.engine.url))

    # -- transactions --------------------------------------------------------------------

    def _transaction(self, work: Callable[[Connection], T], *, read: bool = False) -> T:
        """Run ``work`` in one transaction, retried while the database is unreachable or busy."""
        return self._retried(lambda: self._once(work, read=read))

    def _retried(self, call: Callable[[], T]) -> T:
        """``call()``, called again while it fails with a transient error, for up to
        ``retry_seconds``; its ``SQLAlchemyError`` raised as :class:`StorageFailure`."""
        try:
            # the common case pays nothing for retrying: a worker's task runs two of these,
            # and setting up tenacity's loop cost more than the rest of an empty one
            return call()
        except SQLAlchemyError as exc:
            if not _is_transient(exc):
                raise _storage_failure(exc) from exc
        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return call()
        except SQLAlchemyError as exc:
            raise _storage_failure(exc) from exc
        raise AssertionError("unreachable: tenacity reraises")

    def _once(self, work: Callable[[Connection], T], *, read: bool) -> T:
        with self.engine.connect() as conn:
            if read:
                conn = conn.execution_options(gz_read=True)
            with conn.begin():
                return work(conn)

    # -- submit --------------------------------------------------------------------------

    def create_run(self, plan: RunPlan) -> Submitted:
        """Insert a run and its tasks, claim the roots; or return the run its key names."""
        found = self.direct
        if found is None:
            return self._transaction(lambda conn: self._create_run(conn, plan))
        rows = self._retried(lambda: found.run(statements.PG_CREATE_RUN, _run_arrays(plan)))
        if not rows[0].created:
            return self._transaction(lambda conn: self._existing_run(conn, plan), read=True)
        return Submitted(plan.run_id, True, steps.dispatches_of(plan.run_id, rows))

    def _create_run(self, conn: Connection, plan: RunPlan) -> Submitted:
        row = {
            "id": plan.run_id,
            "name": plan.name,
            "key": plan.key,
            "state": RunState.RUNNING.value,
            "graph_hash": plan.graph_hash,
            "inputs_hash": plan.inputs_hash,
            "tasks_total": len(plan.tasks),
            "tasks_unfinished": len(plan.tasks),
            "tasks_failed": 0,
        }
        stamped = {**row, "created_at": db_now(), "updated_at": db_now()}
        if plan.key is not None:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = (
                dialect.insert(runs).values(**stamped).on_conflict_do_nothing().returning(runs.c.id)
            )
            # no row back: the key names a run already (rowcount is not reliable here)
            if conn.execute(stmt).one_or_none() is None:
                return self._existing_run(conn, plan)
        else:
            conn.execute(insert(runs).values(**stamped))
        conn.execute(
            insert(run_definitions).values(run_id=plan.run_id, graph=plan.graph, inputs=plan.inputs)
        )
        roots = [t for t in plan.tasks if t.waiting_on == 0]
        conn.execute(
            insert(tasks).values(updated_at=db_now()),
            [
                {
                    "run_id": plan.run_id,
                    "task_id": t.task_id,
                    "name": t.name,
                    "state": TaskState.PENDING.value,
                    "attempt": 0,
                    "waiting_on": t.waiting_on,
                    "params": t.params,
                    "sources": codec.dumps(t.sources),
                    "children": codec.dumps(t.children),
                    "options": codec.dumps(t.options),
                    "deliveries": 0,
                }
                for t in plan.tasks
            ],
        )
        steps.event(conn, plan.run_id, "run:submitted", "run_submitted", data={"key": plan.key})
        claimed = steps.claim(conn, plan.run_id, [t.task_id for t in roots])
        return Submitted(plan.run_id, True, claimed)

    def _existing_run(self, conn: Connection, plan: RunPlan) -> Submitted:
        found = conn.execute(
            select(runs.c.id, runs.c.graph_hash, runs.c.inputs_hash).where(runs.c.key == plan.key)
        ).one()
        differs = []
        if found.graph_hash != plan.graph_hash:
            differs.append("graph")
        if found.inputs_hash != plan.inputs_hash:
            differs.append("inputs")
        if differs:
            assert plan.key is not None
            raise IdempotencyConflict(plan.key, found.id, differs)
        return Submitted(found.id, False, [])

    # -- the ledger ----------------------------------------------------------------------

    def mark_published(self, published: Sequence[Published]) -> None:
        """Record in the ledger that these messages were handed to the broker, and when."""
        if not published:
            return
        found = self.direct
        if found is not None:
            self._retried(
                lambda: found.run(statements.PG_MARK_PUBLISHED, _published_arrays(published))
            )
        else:
            self._transaction(lambda conn: _mark_published(conn, published))

    # -- a worker's attempt ---------------------------------------------------------------

    def start_attempt(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        *,
        worker: str | None = None,
        holder: Holder | None = None,
        published: Sequence[Published] = (),
    ) -> StartedAttempt | None:
        """Move the attempt to ``running`` if it is the one the task is on and not started.

        ``None`` means the message is a duplicate or stale, or its run no longer runs:
        do no work. ``holder`` names the process that takes the attempt. ``published``:
        attempts this process published earlier, marked so in the ledger by the same
        transaction (see :class:`gleitzeit.dispatch.LedgerMarks`).
        """

        holder = holder or Holder(None, None)
        if self.direct is not None:
            found = self.direct
            started = self._retried(
                lambda: self._start_in_one(
                    found, run_id, task_id, attempt, worker, holder, published
                )
            )
            if started is not None:
                return started
            published = ()  # marked by that statement, which did nothing else

        def work(conn: Connection) -> StartedAttempt | None:
            _mark_published(conn, published)
            return self._start(conn, run_id, task_id, attempt, worker, holder)

        return self._transaction(work)

    def _start_in_one(
        self,
        found: direct.DirectStatements,
        run_id: str,
        task_id: str,
        attempt: int,
        worker: str | None,
        holder: Holder,
        published: Sequence[Published],
    ) -> StartedAttempt | None:
        rows = found.run(
            statements.PG_START,
            {
                **_published_arrays(published),
                "r": run_id,
                "t": task_id,
                "a": attempt,
                "lease": self.lease_seconds,
                "worker": worker,
                "host": holder.host,
                "pid": holder.pid,
            },
        )
        if not rows:
            return None
        (row,) = rows
        return _started(run_id, task_id, attempt, row, (row.results or {}).items())

    def _start(
        self,
        conn: Connection,
        run_id: str,
        task_id: str,
        attempt: int,
        worker: str | None,
        holder: Holder,
    ) -> StartedAttempt | None:
        row = conn.execute(
            statements.START,
            {"r": run_id, "t": task_id, "a": attempt, "lease": self.lease_seconds},
        ).one_or_none()
        if row is None:
            # a duplicate delivery or a superseded attempt: seen, kept in history, not run
            steps.event(
                conn,
                run_id,
                f"{task_id}:{attempt}:ignored-delivery",
                "delivery_ignored",
                task_id,
                attempt,
            )
            return None
        # the attempt's row is also its task_started event in the history
        conn.execute(
            statements.INSERT_ATTEMPT,
            {
                "run_id": run_id,
                "task_id": task_id,
                "attempt": attempt,
                "state": TaskState.RUNNING.value,
                "worker": worker,
                "host": holder.host,
                "pid": holder.pid,
            },
        )
        sources = codec.loads(row.sources)
        found = conn.execute(statements.RESULTS, {"r": run_id, "ids": sources}) if sources else ()
        return _started(run_id, task_id, attempt, row, found)

    def record_success(self, run_id: str, task_id: str, attempt: int, result: str) -> Recorded:
        """Store the attempt's result, release its children; claim those now ready."""
        if self.direct is not None:
            found = self.direct
            recorded = self._retried(
                lambda: self._succeed_in_one(found, run_id, task_id, attempt, result)
            )
            if recorded is not None:
                return recorded
        return self._transaction(
            lambda conn: self._record_success(conn, run_id, task_id, attempt, result)
        )

    def _succeed_in_one(
        self, found: direct.DirectStatements, run_id: str, task_id: str, attempt: int, result: str
    ) -> Recorded | None:
        rows = found.run(
            statements.PG_SUCCEED, {"r": run_id, "t": task_id, "a": attempt, "result": result}
        )
        if not rows:
            return None  # not the common case: nothing was changed
        claimed = steps.dispatches_of(run_id, rows)
        return Recorded(True, claimed, durable=False)

    def confirm_success(self, run_id: str, task_id: str, attempt: int, result: str) -> Recorded:
        """Return once the success ``record_success`` committed lazily is on disk.

        One statement (``statements.PG_CONFIRM_SUCCESS``), retried as any other. When it
        finds the attempt still running, the database server lost the success with its last
        WAL (a crash between the two): it is recorded again, synchronously, and the children
        that claims are returned to be published. A success found neither (the reconciler
        gave the attempt up meanwhile) is not recorded.
        """
        found = self.direct
        if found is None:
            return Recorded(True)  # every commit of the general path waits for the disk
        row = self._retried(
            lambda: found.run(
                statements.PG_CONFIRM_SUCCESS, {"r": run_id, "t": task_id, "a": attempt}
            )
        )[0]
        if row.state == TaskState.SUCCEEDED.value:
            return Recorded(True)
        if row.state != TaskState.RUNNING.value:
            return Recorded(False)
        log.warning(
            "run %s task %s attempt %d: its success was lost with the database server; "
            "recording it again",
            run_id,
            task_id,
            attempt,
        )
        return self._transaction(
            lambda conn: self._record_success(conn, run_id, task_id, attempt, result)
        )

    def _record_success(
        self, conn: Connection, run_id: str, task_id: str, attempt: int, result: str
    ) -> Recorded:
        row = conn.execute(
            statements.SUCCEED, {"r": run_id, "t": task_id, "a": attempt, "result": result}
        ).one_or_none()
        if row is None:
            return steps.fenced_off(conn, run_id, task_id, attempt, "succeeded")
        # the attempt's row, closed, is also its task_succeeded event in the history
        steps.end_attempt(conn, run_id, task_id, attempt, TaskState.SUCCEEDED)
        options = codec.loads(row.options)
        unneeded = self._skip_alternative(conn, run_id, task_id, attempt, options)
        primary = options.get("stands_in_for")
        if primary:
            # dependents read the result through the id of the task stood in for
            conn.execute(
                update(tasks)
                .where(tasks.c.run_id == run_id, tasks.c.task_id == primary)
                .values(result=result)
            )
        count = steps.count_finished(conn, run_id, finished=1 + unneeded, failed=0)
        claimed = steps.release(conn, run_id, codec.loads(row.children), count.state)
        return Recorded(True, claimed + steps.end_if_done(conn, run_id, count))

    def _skip_alternative(
        self, conn: Connection, run_id: str, task_id: str, attempt: int, options: dict[str, Any]
    ) -> int:
        """Skip the alternative of a task that succeeded: it is not needed."""
        alternative = alternative_of(options.get("on_failure", ON_FAILURE_BLOCK))
        if not alternative:
            return 0
        skipped = conn.execute(
            update(tasks)
            .where(
                tasks.c.run_id == run_id,
                tasks.c.task_id == alternative,
                state_in(task_moves(TaskState.PENDING, to=TaskState.SKIPPED)),
            )
            .values(state=TaskState.SKIPPED.value, finished_at=db_now(), updated_at=db_now())
        ).rowcount
        if skipped:
            steps.event(
                conn,
                run_id,
                f"{alternative}:unneeded:{task_id}:{attempt}",
                "task_skipped",
                alternative,
                data={"by": f"{task_id} succeeded: its alternative is not needed"},
            )
        return int(skipped)

    def record_failure(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        error: ErrorInfo,
        *,
        retry_in: float | None = None,
    ) -> Recorded:
        """Record a failed attempt: retry after ``retry_in`` seconds, or fail the task."""
        if retry_in is not None:
            return self._transaction(
                lambda conn: failures.retry(conn, run_id, task_id, attempt, error, retry_in)
            )
        return self._transaction(lambda conn: failures.fail(conn, run_id, task_id, attempt, error))

    # -- recovery ------------------------------------------------------------------------

    def holder(self, run_id: str, task_id: str, attempt: int) -> Holder | None:
        """The process running this attempt, or ``None`` when the attempt is not running."""

        def work(conn: Connection) -> Holder | None:
            row = conn.execute(
                select(attempts.c.host, attempts.c.pid)
                .join(
                    tasks,
                    (tasks.c.run_id == attempts.c.run_id)
                    & (tasks.c.task_id == attempts.c.task_id)
                    & (tasks.c.attempt == attempts.c.attempt),
                )
                .where(
                    *attempt_key(attempts, run_id, task_id, attempt),
                    state_in([TaskState.RUNNING.value]),
                )
            ).one_or_none()
            return None if row is None else Holder(row.host, row.pid)

        return self._transaction(work, read=True)

    def renew_lease(self, run_id: str, task_id: str, attempt: int) -> bool:
        """Extend a running attempt's lease; ``False`` once the attempt was given up on."""

        def work(conn: Connection) -> bool:
            renewed = conn.execute(
                update(tasks)
                .where(*on_attempt(run_id, task_id, attempt, [TaskState.RUNNING.value]))
                .values(lease_until=db_now() + self.lease_seconds)
            ).rowcount
            return bool(renewed)

        return self._transaction(work)

    def attempt_lost(
        self, run_id: str, task_id: str, attempt: int, *, reason: str, max_lost: int
    ) -> Recorded:
        """Give up on a running attempt whose process is known to be gone.

        The task gets a new attempt, or fails once its worker was lost ``max_lost`` times.
        """
        return self._transaction(
            lambda conn: recovery.lose(conn, run_id, task_id, attempt, reason, max_lost, False)
        )

    def find_stuck(
        self,
        *,
        republish_after: float,
        dispatch_timeout: float,
        stall_timeout: float,
        limit: int = 500,
    ) -> list[StuckRun]:
        """Runs with work to repair (see :mod:`gleitzeit.store.sweep`)."""
        return self._transaction(
            lambda conn: sweep.find_stuck(
                conn,
                republish_after=republish_after,
                dispatch_timeout=dispatch_timeout,
                stall_timeout=stall_timeout,
                limit=limit,
            ),
            read=True,
        )

    def reconcile_run(
        self,
        stuck: StuckRun,
        *,
        republish_after: float,
        stall_timeout: float,
        max_lost: int,
    ) -> Repair:
        """Repair one run in one transaction; every repair re-checks its own condition."""
        return self._transaction(
            lambda conn: recovery.reconcile(
                conn,
                stuck,
                republish_after=republish_after,
                stall_timeout=stall_timeout,
                max_lost=max_lost,
            )
        )

    def set_aside(self, run_id: str, error: str, *, max_failures: int, backoff: Backoff) -> bool:
        """Count a failed reconciliation of a run and put off the next by ``backoff``.

        Returns ``True`` when this was the ``max_failures``-th failure in a row and the run
        was failed with the error as its reason.
        """
        return self._transaction(
            lambda conn: recovery.set_aside(
                conn, run_id, error, max_failures=max_failures, backoff=backoff
            )
        )

    # -- processes -----------------------------------------------------------------------

    def register_process(
        self, name: str, kind: str, *, host: str | None, pid: int | None, tasks: list[str]
    ) -> None:
        """Record that the process ``name`` (a worker's hostname) started, seen now."""
        self._transaction(lambda conn: processes.register(conn, name, kind, host, pid, tasks))

    def process_seen(self, name: str) -> bool:
        """Mark ``name`` seen now; ``False`` when it never registered (or was removed)."""
        return self._transaction(lambda conn: processes.seen(conn, name))

    def record_reconcile_pass(
        self, applied: dict[str, int], stuck: int, *, host: str | None, pid: int | None
    ) -> None:
        """A reconciler pass ended: the reconciler is seen, its repair counts grow."""
        self._transaction(lambda conn: processes.reconciled(conn, host, pid, applied, stuck))

    def get_processes(self, kind: str | None = None) -> list[processes.ProcessRecord]:
        """The processes the store has seen (of ``kind``), with their age by its clock."""
        return self._transaction(lambda conn: processes.read(conn, kind), read=True)

    def read_only(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one read-only transaction (the metrics exporter's reads)."""
        return self._transaction(work, read=True)

    # -- run control ---------------------------------------------------------------------

    def pause_run(self, run_id: str, *, by: str) -> control.Controlled:
        """No new dispatches, nothing new starts; running attempts finish and are recorded."""
        return self._transaction(lambda conn: control.pause(conn, run_id, by))

    def resume_run(self, run_id: str, *, by: str) -> control.Controlled:
        """Run a paused run again; returns the attempts to publish."""
        return self._transaction(lambda conn: control.resume(conn, run_id, by))

    def cancel_run(self, run_id: str, *, by: str) -> control.Controlled:
        """End the run ``cancelled``; returns the message ids to revoke."""
        return self._transaction(lambda conn: control.cancel(conn, run_id, by))

    def retry_run(self, run_id: str, request: control.RetryRequest) -> control.Controlled:
        """Reopen an ended run as ``request`` says; returns the attempts to publish."""
        return self._transaction(lambda conn: control.retry(conn, run_id, request))

    # -- schedules -----------------------------------------------------------------------

    def add_schedule(self, definition: ScheduleDefinition) -> bool:
        """Store a schedule; ``False`` when the same one is stored already.

        Raises :class:`ScheduleConflict` when its name is taken by another definition.
        """
        return self._transaction(lambda conn: schedules.add(conn, definition))

    def remove_schedule(self, name: str) -> None:
        """Delete a schedule (its runs stay); raises :class:`ScheduleNotFound`."""
        self._transaction(lambda conn: schedules.remove(conn, name))

    def pause_schedule(self, name: str) -> bool:
        """Fire nothing more until resumed; ``False`` when it was paused already."""
        return self._transaction(lambda conn: schedules.pause(conn, name))

    def resume_schedule(self, name: str) -> bool:
        """Fire again from the first slot after now (the slots passed while paused are not
        fired); ``False`` when it was not paused."""

        def work(conn: Connection) -> bool:
            row = schedules.locked_row(conn, name)
            if not row.paused:
                return False
            following = Cron(row.cron, row.timezone).next_after(row.now)
            return schedules.resume(conn, name, following)

        return self._transaction(work)

    def list_schedules(self, name: str | None = None) -> list[ScheduleRecord]:
        """Every schedule by name (or only the one named), with its last run's state."""
        return self._transaction(lambda conn: schedules.records(conn, name), read=True)

    def find_due_schedules(
        self, *, now: float | None = None, limit: int = 500
    ) -> list[DueSchedule]:
        """Schedules whose next slot has come by ``now`` (default: the database's clock)."""
        return self._transaction(lambda conn: schedules.find_due(conn, now, limit), read=True)

    def fire_schedule(
        self, name: str, *, due: float, following: float, last: float, plans: Sequence[RunPlan]
    ) -> FiredSlots:
        """Claim a schedule's slots from ``due`` (its next slot as read) and insert their
        runs, in one transaction; nothing when another tick claimed them first.

        The schedule moves on to ``following``, ``last`` being the last slot fired. A
        slot's run key naming a run already (another definition's, after the schedule was
        removed and added again) counts as that slot's run.
        """

        def work(conn: Connection) -> FiredSlots:
            if not schedules.claim(conn, name, due, following, last):
                return FiredSlots(False)
            run_ids: list[str] = []
            claimed = []
            for plan in plans:
                try:
                    submitted = self._create_run(conn, plan)
                except IdempotencyConflict as exc:
                    log.warning("schedule %s: %s; counted as the slot's run", name, exc)
                    run_ids.append(exc.run_id)
                    continue
                run_ids.append(submitted.run_id)
                claimed += submitted.dispatches
            if run_ids:
                schedules.set_last_run(conn, name, run_ids[-1])
            return FiredSlots(True, run_ids, claimed)

        return self._transaction(work)

    def now(self) -> float:
        """The database's clock, in epoch seconds."""
        return float(
            self._transaction(lambda conn: conn.execute(select(db_now())).scalar_one(), read=True)
        )

    # -- reads ---------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        return self._transaction(lambda conn: reads.get_run(conn, run_id), read=True)

    def get_progress(self, run_id: str) -> RunProgress:
        """The run's state and task counts, without its graph and inputs: cheap to poll."""
        return self._transaction(lambda conn: reads.get_progress(conn, run_id), read=True)

    def run_ids_starting(self, prefix: str, *, limit: int) -> list[str]:
        """Up to ``limit`` ids of runs that start with ``prefix``, in order (an index range)."""
        return self._transaction(
            lambda conn: reads.run_ids_starting(conn, prefix, limit=limit), read=True
        )

    def list_runs(
        self, *, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        return self._transaction(
            lambda conn: reads.list_runs(conn, status=status, name=name, limit=limit), read=True
        )

    def get_tasks(self, run_id: str, *, with_attempts: bool = True) -> dict[str, TaskRecord]:
        return self._transaction(
            lambda conn: reads.get_tasks(conn, run_id, with_attempts=with_attempts), read=True
        )

    def get_finished(self, run_id: str, since: float) -> tuple[RunProgress, list[FinishedTask]]:
        """The run's state and counts, and its tasks that ended at or after ``since`` (the
        database's clock), read after them: a run found ended has every end in the list."""

        def work(conn: Connection) -> tuple[RunProgress, list[FinishedTask]]:
            progress = reads.get_progress(conn, run_id)
            return progress, reads.get_finished(conn, run_id, since)

        return self._transaction(work, read=True)

    def get_run_statuses(self, run_id: str) -> tuple[RunRecord, dict[str, TaskStatus]]:
        """A run and its tasks' states, attempts and errors, read in one transaction: what
        drawing its graph needs (no params, results or attempts' rows)."""

        def read(conn: Connection) -> tuple[RunRecord, dict[str, TaskStatus]]:
            return reads.get_run(conn, run_id), reads.get_task_statuses(conn, run_id)

        return self._transaction(read, read=True)

    def get_events(self, run_id: str) -> list[EventRecord]:
        return self._transaction(lambda conn: reads.get_events(conn, run_id), read=True)

    def get_dispatches(self, run_id: str) -> list[DispatchRecord]:
        """The dispatch ledger of a run: one row per published attempt."""
        return self._transaction(lambda conn: reads.get_dispatches(conn, run_id), read=True)

    def get_results(self, run_id: str) -> dict[str, Any]:
        """Results of the run's succeeded tasks, by task id."""
        return self._transaction(lambda conn: reads.get_results(conn, run_id), read=True)


def _started(
    run_id: str, task_id: str, attempt: int, row: Any, parents: Iterable[tuple[str, str | None]]
) -> StartedAttempt:
    """The started attempt of ``row`` (its task's columns and run's inputs), with the
    stored results of its parents as ``(task id, result)``."""
    results = {}
    skipped = set()
    for parent, result in parents:
        if result is None:
            # skipped with no alternative's result to stand in: it reads as None
            skipped.add(parent)
        results[parent] = codec.loads(result)
    return StartedAttempt(
        run_id=run_id,
        task_id=task_id,
        attempt=attempt,
        name=row.name,
        params=codec.loads(row.params),
        options=codec.loads(row.options),
        inputs=codec.loads(row.inputs),
        results=results,
        failures=row.failures,
        skipped=frozenset(skipped),
    )


def _run_arrays(plan: RunPlan) -> dict[str, Any]:
    """``PG_CREATE_RUN``'s parameters: the run's own, and its tasks' as parallel arrays."""
    return {
        "id": plan.run_id,
        "name": plan.name,
        "key": plan.key,
        "graph_hash": plan.graph_hash,
        "inputs_hash": plan.inputs_hash,
        "total": len(plan.tasks),
        "graph": plan.graph,
        "inputs": plan.inputs,
        "event_data": codec.dumps({"key": plan.key}),
        "task_ids": [t.task_id for t in plan.tasks],
        "names": [t.name for t in plan.tasks],
        "waiting_on": [t.waiting_on for t in plan.tasks],
        "params": [t.params for t in plan.tasks],
        "sources": [codec.dumps(t.sources) for t in plan.tasks],
        "children": [codec.dumps(t.children) for t in plan.tasks],
        "options": [codec.dumps(t.options) for t in plan.tasks],
    }


def _published_arrays(published: Sequence[Published]) -> dict[str, list[Any]]:
    """``published`` as the parallel arrays of ``PG_START`` and ``PG_MARK_PUBLISHED``: each
    attempt's key, and how many seconds ago it reached the broker."""
    now = time.monotonic()
    return {
        "mr": [p.dispatch.run_id for p in published],
        "mt": [p.dispatch.task_id for p in published],
        "ma": [p.dispatch.attempt for p in published],
        "mago": [max(0.0, now - p.at) for p in published],
    }


def _mark_published(conn: Connection, published: Sequence[Published]) -> None:
    """Stamp each attempt published at the moment it was, on the database's clock: a mark
    written later (``LedgerMarks``) still says when the message went out."""
    if published:
        now = time.monotonic()
        conn.execute(
            statements.MARK_PUBLISHED,
            [
                {"r": d.run_id, "t": d.task_id, "a": d.attempt, "ago": max(0.0, now - at)}
                for d, at in published
            ],
        )


__all__ = ["Store", "message_id"]
