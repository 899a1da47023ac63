"""Running one attempt on a worker: start it, resolve its params, call the task, record.

The message carries ``(run_id, task_id, attempt)``; the attempt number is the fencing
token. A message whose attempt is not the task's current, unstarted one (a duplicate
delivery, a stale retry) does no work. Whatever the task's body does, the outcome is
recorded in the store; a bad result fails the task, never the worker.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any

from gleitzeit import codec, policy, refs
from gleitzeit.crashpoints import crash_point
from gleitzeit.dispatch import Dispatcher
from gleitzeit.errors import ReferenceResolutionError, ResultError
from gleitzeit.policy import Backoff
from gleitzeit.settings import Settings
from gleitzeit.store import ErrorInfo, Store
from gleitzeit.store.records import StartedAttempt

log = logging.getLogger(__name__)


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
    if not policy.should_retry(exc, attempt=started.attempt, retries=retries, retry_on=retry_on):
        return None
    backoff = Backoff.coerce(options.get("backoff"))
    return policy.compute_backoff(started.attempt, backoff)


class Executor:
    """Runs attempts of one Celery app against one store."""

    def __init__(self, app: Any, store: Store, settings: Settings) -> None:
        self.app = app
        self.store = store
        self.settings = settings
        self.dispatcher = Dispatcher(app, store)

    def execute(self, run_id: str, task_id: str, attempt: int, *, worker: str | None) -> None:
        started = self.store.start_attempt(run_id, task_id, attempt, worker=worker)
        if started is None:
            log.info(
                "run %s task %s attempt %d: duplicate or stale message, no work",
                run_id,
                task_id,
                attempt,
            )
            return
        crash_point("after_start_commit")
        outcome = self._run(started)
        if isinstance(outcome, Failure):
            recorded = self.store.record_failure(
                run_id, task_id, attempt, outcome.error, retry_in=outcome.retry_in
            )
        else:
            recorded = self.store.record_success(run_id, task_id, attempt, outcome)
        self.dispatcher.publish(recorded.dispatches)

    def _run(self, started: StartedAttempt) -> str | Failure:
        """The stored JSON result of the attempt, or why it failed."""
        try:
            lookup = refs.lookup_in(started.inputs, started.results)
            params = refs.resolve(started.params, lookup)
        except ReferenceResolutionError as exc:
            return Failure(_error_info(exc, with_traceback=False), None)
        body = self.app.tasks.get(started.name)
        if body is None:
            message = (
                f"no Celery task named {started.name!r} is registered on this worker; "
                "import its module with -I or include"
            )
            return Failure(ErrorInfo("gleitzeit.UnknownTask", message), None)
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
