"""The reconciler: brings every stuck run to an end, from the store alone.

One round finds what is stuck (:mod:`gleitzeit.store.sweep`), repairs each run in one
transaction of its own, and only after that commit publishes what the repair claimed:
a crash between the two leaves unpublished ledger rows, which the next round finds.
Every repair is a conditional ``UPDATE`` that re-checks what was found, so rounds that
overlap (two beat schedulers, a CLI loop beside beat) or race normal progress do no
harm: at most one of them applies each repair.

Beat runs a round every ``reconcile_interval`` seconds (``gleitzeit.reconcile``);
``gleitzeit reconcile`` runs rounds from the command line.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass, field

from gleitzeit import policy
from gleitzeit.dispatch import Dispatcher
from gleitzeit.errors import StorageFailure
from gleitzeit.policy import Backoff
from gleitzeit.settings import Settings
from gleitzeit.store import Store
from gleitzeit.store.records import StuckRun

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What one round did: repairs applied by kind, messages published, runs set aside."""

    applied: Counter[str] = field(default_factory=Counter)
    published: int = 0
    unpublished: int = 0
    set_aside: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{kind} {n}" for kind, n in sorted(self.applied.items())]
        parts.append(f"published {self.published}")
        if self.unpublished:
            parts.append(f"left unpublished {self.unpublished}")
        if self.set_aside:
            parts.append(f"set aside {len(self.set_aside)}")
        return ", ".join(parts)


class Reconciler:
    """Finds stuck runs in one store and repairs them, publishing through one app."""

    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings

    def run_once(self) -> Reconciled:
        """One round over every stuck run.

        Raises :class:`StorageFailure` when the database is unreachable: nothing can be
        repaired then, and the next round tries again.
        """
        done = Reconciled()
        found = self.store.find_stuck(
            republish_after=self.settings.republish_after,
            dispatch_timeout=self.settings.dispatch_timeout,
            stall_timeout=self.settings.stall_timeout,
        )
        for stuck in found:
            self._repair(stuck, done)
        if done.applied or done.set_aside:
            log.info("reconciled: %s", done)
        # the heartbeat health checks and metrics read: the pass ran, what it found and did
        self.store.record_reconcile_pass(
            dict(done.applied), len(found), host=socket.gethostname(), pid=os.getpid()
        )
        return done

    def _repair(self, stuck: StuckRun, done: Reconciled) -> None:
        try:
            repair = self.store.reconcile_run(
                stuck,
                republish_after=self.settings.republish_after,
                stall_timeout=self.settings.stall_timeout,
                max_lost=self.settings.max_lost_attempts,
            )
            to_publish = [*repair.dispatches, *repair.republish]
            published = self.dispatcher.publish(to_publish)
        except StorageFailure as exc:
            if exc.transient:
                raise
            self._set_aside(stuck.run_id, exc, done)
            return
        except Exception as exc:
            # a fault of this run's data or messages; others go on
            log.exception("run %s: reconciliation failed", stuck.run_id)
            self._set_aside(stuck.run_id, exc, done)
            return
        done.applied.update(repair.applied)
        done.published += len(published)
        done.unpublished += len(to_publish) - len(published)

    def _set_aside(self, run_id: str, exc: Exception, done: Reconciled) -> None:
        error = f"{policy.type_name(type(exc))}: {exc}"
        # the first retry comes at the next round; each failure after that doubles the wait
        interval = self.settings.reconcile_interval
        backoff = Backoff(base=interval, factor=2.0, cap=64 * interval, jitter=False)
        failed = self.store.set_aside(
            run_id, error, max_failures=self.settings.max_reconcile_failures, backoff=backoff
        )
        done.set_aside.append(run_id)
        if failed:
            log.error("run %s failed: its reconciliation kept failing (%s)", run_id, error)
        else:
            log.warning("run %s set aside: %s", run_id, error)
