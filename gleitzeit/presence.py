"""A worker's presence in the store: registered as it starts, marked seen by a thread.

The thread runs in the worker's main process, beside its consumer, and writes one small
``UPDATE`` every ``worker_heartbeat_interval``: a task's own statements stay as they are.
``gleitzeit health`` counts a worker unseen for three intervals as gone; the task names
a worker registers tell which tasks the deployment can run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable

from gleitzeit.errors import StorageFailure
from gleitzeit.store import Store
from gleitzeit.store.processes import WORKER

log = logging.getLogger(__name__)


def task_names(names: Iterable[str]) -> list[str]:
    """The names of the user's tasks among a Celery app's registered ones (not Celery's)."""
    return sorted(name for name in names if not name.startswith("celery."))


class WorkerPresence:
    """Keeps the row of the worker ``name`` in the store fresh while the worker runs."""

    def __init__(self, store: Store, name: str, tasks: list[str], *, interval: float) -> None:
        self.store = store
        self.name = name
        self.tasks = tasks
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gleitzeit-presence", daemon=True)

    def start(self) -> None:
        """Register the worker (in the thread: a store that is down must not delay the
        worker's start), then mark it seen every ``interval``."""
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval)

    def _register(self) -> None:
        self.store.register_process(
            self.name, WORKER, host=socket.gethostname(), pid=os.getpid(), tasks=self.tasks
        )

    def _run(self) -> None:
        registered = False
        while True:
            try:
                if not registered or not self.store.process_seen(self.name):
                    self._register()
                registered = True
            except StorageFailure as exc:
                log.warning("worker %s could not mark itself seen: %s", self.name, exc)
            if self._stop.wait(self.interval):
                return
