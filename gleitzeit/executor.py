"""Running one attempt on a worker: start it, resolve its params, call the task, record.

The message carries ``(run_id, task_id, attempt)``; the attempt number is the fencing
token. A message whose attempt is not the task's current, unstarted one (a duplicate
delivery, a stale retry) does no work. Whatever the task's body does, the outcome is
recorded in the store; a bad result fails the task, never the worker.

While the body runs, a heartbeat thread renews the attempt's lease; when it stops (the
process was killed), the lease runs out and the reconciler gives the task a new attempt.
Faster, when Celery redelivers the message of an attempt whose process is gone (a pool
process killed by the OOM killer, with ``task_reject_on_worker_lost``), the redelivery
sees on this machine that the holder's process no longer exists and does the same at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gleitzeit import codec, policy, refs
from gleitzeit.crashpoints import crash_point
from gleitzeit.dispatch import Dispatcher, LedgerMarks
from gleitzeit.errors import (
    ReferenceResolutionError,
    ResultError,
    RunNotFound,
    StorageFailure,
    UnknownTask,
)
from gleitzeit.policy import Backoff
from gleitzeit.settings import Settings
from gleitzeit.store import ErrorInfo, Store
from gleitzeit.store.records import Holder, StartedAttempt

log = logging.getLogger(__name__)

HOST = socket.gethostname()


@dataclass(frozen=True)
class Failure:
    """An attempt's failure and whether the task's policy gives it another attempt."""

    error: ErrorInfo
    retry_in: float | None


def _error_info(exc: BaseException, *, with_traceback: bool = True) -> ErrorInfo:
    return ErrorInfo(
        type=policy.type_name(type(exc)),
        message=str(exc) or type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)) if with_traceback else None,
    )


def _retry_in(exc: BaseException, started: StartedAttempt) -> float | None:
    options = started.options
    retries = int(options.get("retries", 0))
    retry_on = options.get("retry_on", [])
    # attempts numbers also count re-dispatches (a lost message, a resume); failures don't
    failure = started.failures + 1
    if not policy.should_retry(exc, attempt=failure, retries=retries, retry_on=retry_on):
        return None
    backoff = Backoff.coerce(options.get("backoff"))
    return policy.compute_backoff(failure, backoff)


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` of this machine has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # "pid (comm) state ...": comm may hold spaces and parentheses
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


Attempt = tuple[str, str, int]


class Heartbeat:
    """Renews the leases of the attempts this process runs, from one thread of its own.

    Holding an attempt is a set insertion; the thread, started on first use in each
    process (threads do not survive a fork), wakes every third of the lease and renews
    the lease of every attempt still held.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.every = store.lease_seconds / 3
        self._held: set[Attempt] = set()
        self._lock = threading.Lock()
        self._owner_pid = 0

    @contextmanager
    def hold(self, attempt: Attempt) -> Iterator[None]:
        """Keep ``attempt``'s lease alive while the block runs."""
        with self._lock:
            self._held.add(attempt)
            if self._owner_pid != os.getpid():
                self._owner_pid = os.getpid()
                threading.Thread(target=self._beat, name="gleitzeit-heartbeat", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(attempt)

    def _beat(self) -> None:
        while True:
            time.sleep(self.every)
            with self._lock:
                held = sorted(self._held)
            for attempt in held:
                self._renew(attempt)

    def _renew(self, attempt: Attempt) -> None:
        try:
            renewed = self.store.renew_lease(*attempt)
        except StorageFailure as exc:
            log.warning(
                "heartbeat of run %s task %s could not renew its lease: %s", *attempt[:2], exc
            )
            return
        if not renewed:
            with self._lock:
                if attempt not in self._held:
                    return  # its outcome was recorded meanwhile
                self._held.discard(attempt)
            log.warning(
                "run %s task %s attempt %d was given up on while running; "
                "its outcome will be ignored",
                *attempt,
            )


class Executor:
    """Runs attempts of one Celery app against one store."""

    def __init__(self, app: Any, store: Store, settings: Settings) -> None:
        self.app = app
        self.store = store
        self.settings = settings
        self.marks = LedgerMarks(store)
        self.dispatcher = Dispatcher(
            app, store, breaker_reset_seconds=settings.breaker_reset_seconds, marks=self.marks
        )
        self.heartbeat = Heartbeat(store)

    def execute(self, run_id: str, task_id: str, attempt: int, *, worker: str | None) -> None:
        me = Holder(HOST, os.getpid())
        marks = self.marks.take()  # what this process published last rides on this start
        try:
            started = self.store.start_attempt(
                run_id, task_id, attempt, worker=worker, holder=me, published=marks
            )
        except BaseException:
            self.marks.give_back(marks)
            raise
        if started is None:
            self._no_work(run_id, task_id, attempt)
            return
        crash_point("after_start_commit")
        # the lease is the attempt's until its outcome is recorded: a record that waits
        # for a lock (a migration holding a table) is not a lost worker
        with self.heartbeat.hold((run_id, task_id, attempt)):
            outcome = self._run(started)
            if isinstance(outcome, Failure):
                recorded = self.store.record_failure(
                    run_id, task_id, attempt, outcome.error, retry_in=outcome.retry_in
                )
                self.dispatcher.publish(recorded.dispatches)
            else:
                self._succeed(run_id, task_id, attempt, outcome)

    def _succeed(self, run_id: str, task_id: str, attempt: int, result: str) -> None:
        recorded = self.store.record_success(run_id, task_id, attempt, result)
        try:
            self.dispatcher.publish(recorded.dispatches)
        finally:
            if not recorded.durable:
                # the children are on their way while the success reaches the disk; the
                # message is acknowledged (the task returns) only once it has
                confirmed = self.store.confirm_success(run_id, task_id, attempt, result)
                self.dispatcher.publish(confirmed.dispatches)

    def _no_work(self, run_id: str, task_id: str, attempt: int) -> None:
        """A message that starts nothing: a duplicate or stale one, or one from elsewhere."""
        try:
            self.store.get_progress(run_id)
        except RunNotFound:
            # not stale: no store that held this run ever dispatched to this worker
            log.warning(
                "run %s task %s attempt %d: no such run in this worker's store (%s); the "
                "message is dropped. Another deployment, or an embedded run given --broker, "
                "sends to this broker with another store: check that its "
                "GLEITZEIT_DATABASE_URL is this worker's, or give each store its own broker "
                "or queue",
                run_id,
                task_id,
                attempt,
                self.store.location,
            )
            return
        log.info(
            "run %s task %s attempt %d: duplicate or stale message, no work",
            run_id,
            task_id,
            attempt,
        )
        self._recover_if_holder_gone(run_id, task_id, attempt)

    def _recover_if_holder_gone(self, run_id: str, task_id: str, attempt: int) -> None:
        """A redelivered message whose attempt's process on this machine has died."""
        holder = self.store.holder(run_id, task_id, attempt)
        if holder is None or holder.host != HOST or holder.pid is None:
            return
        if holder.pid == os.getpid() or not process_gone(holder.pid):
            return
        recorded = self.store.attempt_lost(
            run_id,
            task_id,
            attempt,
            reason=f"its worker process {holder.pid} on {holder.host} is gone",
            max_lost=self.settings.max_lost_attempts,
        )
        self.dispatcher.publish(recorded.dispatches)

    def _run(self, started: StartedAttempt) -> str | Failure:
        """The stored JSON result of the attempt, or why it failed."""
        try:
            lookup = refs.lookup_in(started.inputs, started.results, skipped=started.skipped)
            params = refs.resolve(started.params, lookup)
        except ReferenceResolutionError as exc:
            return Failure(_error_info(exc, with_traceback=False), None)
        body = self.app.tasks.get(started.name)
        if body is None:
            message = (
                f"no Celery task named {started.name!r} is registered on this worker; "
                "import its module with -I or include"
            )
            return Failure(ErrorInfo(policy.type_name(UnknownTask), message), None)
        try:
            value = body(**params)
        except Exception as exc:
            return Failure(_error_info(exc), _retry_in(exc, started))
        try:
            return codec.encode_result(
                value, task_id=started.task_id, limit=self.settings.result_limit
            )
        except ResultError as exc:
            return Failure(_error_info(exc, with_traceback=False), None)
