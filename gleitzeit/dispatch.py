"""Publishing claimed attempts to Celery, after the claim's transaction has committed.

The message is small and fixed: ``gleitzeit.execute(run_id, task_id, attempt)`` with
the attempt's deterministic message id; the worker reads params and upstream results
from the store. Passing broker errors are retried with tenacity; what still fails stays
unpublished in the dispatch ledger, for the reconciler to publish later.

The attempts of one publish go out in kombu's publish batches (one Redis round trip for
many messages; other brokers publish each at once): the first alone, so that a chain's
next task waits for nothing, then in batches that double up to ``BATCH_MAX``. A fan-out
of 1,000 tasks reaches the broker several times faster than one message at a time, and
an attempt counts as published only once its batch has been flushed.

A circuit breaker (pybreaker) per broker and process stops publishing after repeated
broker failures, for ``breaker_reset_seconds``, so that nothing busy-loops against a
broker that is down. Its state lives in this process's memory, never in the broker
it guards: a broker that is down cannot make it read "healthy".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import pybreaker
from kombu.exceptions import BatchPublishError
from kombu.exceptions import OperationalError as KombuOperationalError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from gleitzeit.crashpoints import crash_point
from gleitzeit.errors import DispatchFailure, StorageFailure
from gleitzeit.process_metrics import PUBLISH_BATCH, BreakerStates, show_breaker_state
from gleitzeit.store import Dispatch, Store
from gleitzeit.store.records import Published

log = logging.getLogger(__name__)

EXECUTE_TASK = "gleitzeit.execute"
#: seconds between the soft time limit (raised in the task) and the hard one (kill)
HARD_LIMIT_GRACE = 10.0

# a batch that failed to flush may have been delivered in part: its attempts stay
# unpublished in the ledger, and a second copy of one is turned away by its fence
_TRANSIENT = (KombuOperationalError, BatchPublishError, ConnectionError, OSError, TimeoutError)
#: messages in the largest publish batch
BATCH_MAX = 64
#: failed publish tries in a row that turn publishing off
BREAKER_FAIL_MAX = 3

_breakers: dict[str, pybreaker.CircuitBreaker] = {}


def breaker_for(broker_url: str, *, reset_seconds: float = 30.0) -> pybreaker.CircuitBreaker:
    """This process's circuit breaker for the broker at ``broker_url``."""
    breaker = _breakers.get(broker_url)
    if breaker is None:
        breaker = _breakers[broker_url] = pybreaker.CircuitBreaker(
            fail_max=BREAKER_FAIL_MAX,
            reset_timeout=reset_seconds,
            # only a broker that cannot be reached counts; a bad message is not its fault
            exclude=[lambda exc: not isinstance(exc, _TRANSIENT)],
            name=f"broker {broker_url}",
            listeners=[BreakerStates()],
        )
        show_breaker_state(str(breaker.current_state))
    return breaker


def message_options(dispatch: Dispatch) -> dict[str, Any]:
    """``apply_async`` options for one attempt's message."""
    options: dict[str, Any] = {"task_id": dispatch.message_id}
    if dispatch.queue:
        options["queue"] = dispatch.queue
    if dispatch.priority is not None:
        options["priority"] = dispatch.priority
    if dispatch.countdown:
        options["countdown"] = dispatch.countdown
    if dispatch.timeout:
        options["soft_time_limit"] = dispatch.timeout
        options["time_limit"] = dispatch.timeout + HARD_LIMIT_GRACE
    return options


#: how long a worker's published attempts may wait for a transaction to carry their marks
LEDGER_MARK_DELAY = 0.2


class LedgerMarks:
    """Published attempts whose ledger rows this process has yet to mark published.

    A worker marks them in its next transaction (the start of its next attempt) instead
    of one of their own: a commit less per task. When no transaction comes within
    ``delay`` seconds, a thread of this process marks what waits, in one transaction.
    Until marked, an attempt looks unpublished; the reconciler publishes such an attempt
    again only after ``republish_after`` (10 s) and only while it has not started, so
    the wait costs nothing unless this process dies within it: then one extra message,
    which the attempt's fence turns away.
    """

    def __init__(self, store: Store, *, delay: float = LEDGER_MARK_DELAY) -> None:
        self.store = store
        self.delay = delay
        self._waiting: list[Published] = []
        self._changed = threading.Condition()
        self._owner_pid = 0

    def add(self, published: Sequence[Published]) -> None:
        if not published:
            return
        with self._changed:
            self._waiting.extend(published)
            if self._owner_pid != os.getpid():
                # started on first use in each process: threads do not survive a fork
                self._owner_pid = os.getpid()
                threading.Thread(target=self._run, name="gleitzeit-ledger", daemon=True).start()
            self._changed.notify()

    def take(self) -> list[Published]:
        """What waits, for the caller's transaction to mark; give it back if that fails."""
        with self._changed:
            taken, self._waiting = self._waiting, []
        return taken

    def give_back(self, marks: Sequence[Published]) -> None:
        if marks:
            with self._changed:
                self._waiting[:0] = marks
                self._changed.notify()

    def flush(self) -> None:
        """Mark what waits now, in a transaction of its own."""
        marks = self.take()
        if not marks:
            return
        try:
            self.store.mark_published(marks)
        except StorageFailure as exc:
            log.warning("could not mark %d published attempts in the ledger: %s", len(marks), exc)
            self.give_back(marks)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._waiting))
            time.sleep(self.delay)  # a batch window: the next attempt's start may take them
            self.flush()


def _add_published(published: list[Published], flushed: list[Dispatch]) -> None:
    now = time.monotonic()
    published.extend(Published(dispatch, now) for dispatch in flushed)
    flushed.clear()


class Dispatcher:
    """Publishes attempts to a Celery app's broker and records them in the ledger."""

    def __init__(
        self,
        app: Any,
        store: Store,
        *,
        attempts: int = 5,
        breaker_reset_seconds: float = 30.0,
        breaker: pybreaker.CircuitBreaker | None = None,
        marks: LedgerMarks | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.attempts = attempts
        #: where published attempts wait to be marked; ``None``: marked at once
        self.marks = marks
        self.breaker = breaker or breaker_for(
            str(app.conf.broker_url), reset_seconds=breaker_reset_seconds
        )

    def _send(self, dispatch: Dispatch, producer: Any, *, declare: bool) -> None:
        run_id, task_id, attempt = dispatch.run_id, dispatch.task_id, dispatch.attempt
        self.app.send_task(
            EXECUTE_TASK,
            args=(run_id, task_id, attempt),
            producer=producer,
            retry=False,
            # the outcome is in the store: no result backend subscription per message
            # (a Redis backend subscribes to each sent task's result otherwise), and no
            # trail of AsyncResults on the task that publishes a fan-out
            ignore_result=True,
            add_to_parent=False,
            # Celery declares the queue (a cached no-op after the first time, but not a
            # cheap one) and computes a safe repr of the arguments for every message
            **({} if declare else {"declare": []}),
            argsrepr=f"({run_id!r}, {task_id!r}, {attempt})",
            kwargsrepr="{}",
            **message_options(dispatch),
        )

    def _send_all(self, claimed: Sequence[Dispatch], published: list[Published]) -> None:
        """Publish what of ``claimed`` is not yet in ``published``, adding it there."""
        declared: set[str | None] = set()
        batched: list[Dispatch] = []
        batch_size = 1
        with self.app.producer_or_acquire() as producer, producer.batch() as batch:
            for dispatch in claimed[len(published) :]:
                self._send(dispatch, producer, declare=dispatch.queue not in declared)
                declared.add(dispatch.queue)
                batched.append(dispatch)
                if len(batched) == batch_size:
                    batch.flush()
                    _add_published(published, batched)
                    batch_size = min(2 * batch_size, BATCH_MAX)
            batch.flush()
            _add_published(published, batched)

    def publish(self, claimed: Sequence[Dispatch]) -> list[Dispatch]:
        """Publish every claimed attempt; return those that reached the broker."""
        if not claimed:
            return []
        crash_point("after_claim_commit")
        PUBLISH_BATCH.observe(len(claimed))
        published: list[Published] = []
        retrying = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self.breaker.call(self._send_all, claimed, published)
        except pybreaker.CircuitBreakerError:
            log.warning(
                "publishing is off after repeated broker failures: %d of %d attempts wait "
                "in the ledger for the reconciler",
                len(claimed) - len(published),
                len(claimed),
            )
        except _TRANSIENT as exc:
            log.error(
                "broker unreachable: %d of %d attempts left unpublished in the ledger (%s)",
                len(claimed) - len(published),
                len(claimed),
                exc,
            )
        finally:
            if published:
                crash_point("after_publish")
            if self.marks is not None:
                self.marks.add(published)
            else:
                self.store.mark_published(published)
        return [p.dispatch for p in published]

    def publish_or_raise(self, claimed: Sequence[Dispatch]) -> None:
        published = self.publish(claimed)
        if len(published) < len(claimed):
            raise DispatchFailure(
                f"{len(claimed) - len(published)} task messages could not be published; "
                "they stay in the dispatch ledger"
            )
