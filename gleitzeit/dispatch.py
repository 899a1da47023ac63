"""Publishing claimed attempts to Celery, after the claim's transaction has committed.

The message is small and fixed: ``gleitzeit.execute(run_id, task_id, attempt)`` with
the attempt's deterministic message id; the worker reads params and upstream results
from the store. Passing broker errors are retried with tenacity; what still fails stays
unpublished in the dispatch ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from gleitzeit.crashpoints import crash_point
from gleitzeit.errors import DispatchFailure
from gleitzeit.store import Dispatch, Store

log = logging.getLogger(__name__)

EXECUTE_TASK = "gleitzeit.execute"
#: seconds between the soft time limit (raised in the task) and the hard one (kill)
HARD_LIMIT_GRACE = 10.0

_TRANSIENT = (KombuOperationalError, ConnectionError, OSError, TimeoutError)


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


class Dispatcher:
    """Publishes attempts to a Celery app's broker and records them in the ledger."""

    def __init__(self, app: Any, store: Store, *, attempts: int = 5) -> None:
        self.app = app
        self.store = store
        self.attempts = attempts

    def _send(self, dispatch: Dispatch, producer: Any) -> None:
        self.app.send_task(
            EXECUTE_TASK,
            args=(dispatch.run_id, dispatch.task_id, dispatch.attempt),
            producer=producer,
            retry=False,
            **message_options(dispatch),
        )

    def publish(self, claimed: Sequence[Dispatch]) -> list[Dispatch]:
        """Publish every claimed attempt; return those that reached the broker."""
        if not claimed:
            return []
        crash_point("after_claim_commit")
        published: list[Dispatch] = []
        retrying = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, self.app.producer_or_acquire() as producer:
                    for dispatch in claimed[len(published) :]:
                        self._send(dispatch, producer)
                        published.append(dispatch)
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
            self.store.mark_published(published)
        return published

    def publish_or_raise(self, claimed: Sequence[Dispatch]) -> None:
        published = self.publish(claimed)
        if len(published) < len(claimed):
            raise DispatchFailure(
                f"{len(claimed) - len(published)} task messages could not be published; "
                "they stay in the dispatch ledger"
            )
