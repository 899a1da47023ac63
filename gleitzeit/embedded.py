"""Embedded mode: a whole run on one machine, with no server to install.

A real Celery worker runs in this process on a thread pool, fed by Celery's in-memory
transport, against a SQLite store: the same code path as many machines, in one
process. The memory transport polls once a second by default; a 5 ms polling interval
makes small tasks flow. Celery's thread pool does not enforce time limits, so
``timeout`` is not applied in embedded mode.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from celery import Celery

from gleitzeit.client import Client
from gleitzeit.settings import Settings
from gleitzeit.worker import create_app

log = logging.getLogger(__name__)

MEMORY_POLLING_INTERVAL = 0.005


def embedded_app(settings: Settings) -> Celery:
    """A gleitzeit Celery app on the in-memory transport."""
    memory = replace(settings, broker_url="memory://localhost/")
    app = create_app(memory, main="gleitzeit-embedded")
    app.conf.broker_url = "memory://localhost/"
    app.conf.broker_transport_options = {"polling_interval": MEMORY_POLLING_INTERVAL}
    app.conf.task_always_eager = False
    return app


@contextmanager
def embedded_worker(app: Celery, *, concurrency: int | None = None) -> Iterator[None]:
    """Run a Celery worker for ``app`` on a thread until the block ends."""
    ready = threading.Event()
    # the thread pool traces tasks through the default app, not the worker's own
    app.set_default()
    worker = app.WorkController(
        pool="threads",
        concurrency=concurrency or max(os.cpu_count() or 1, 2) * 2,
        hostname=f"gleitzeit-embedded-{os.getpid()}@{socket.gethostname()}",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=lambda _consumer: ready.set(),
        loglevel=logging.WARNING,
    )
    thread = threading.Thread(target=worker.start, name="gleitzeit-embedded-worker", daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the embedded Celery worker did not start within 30 s")
    try:
        yield
    finally:
        worker.stop(in_sighandler=False)
        thread.join(timeout=30)


@contextmanager
def embedded_client(
    database_url: str | None = None, *, concurrency: int | None = None
) -> Iterator[Client]:
    """A :class:`Client` whose runs execute on an in-process worker."""
    settings = Settings.from_env(database_url=database_url)
    app = embedded_app(settings)
    with embedded_worker(app, concurrency=concurrency):
        yield Client(app=app, settings=app.conf.gleitzeit_settings)
