"""Embedded mode: a whole run on one machine, with no server to install.

A real Celery worker runs in this process on a thread pool, fed by Celery's in-memory
transport, against a SQLite store of its own (``sqlite:///gleitzeit.db``): the same
code path as many machines, in one process. ``CELERY_BROKER_URL`` and
``GLEITZEIT_DATABASE_URL`` are not read, so that a shell set up for a deployment never
sends an embedded run's messages to that deployment's workers (which would take them
and record them in their own store); a broker and a store are used only when named
(``broker_url``, ``database_url``). The memory transport polls once a second by
default; a 5 ms polling interval makes small tasks flow. Celery's thread pool does not
enforce time limits, so ``timeout`` is not applied in embedded mode.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from kombu.transport import memory
from kombu.utils.url import maybe_sanitize_url

from gleitzeit.client import Client
from gleitzeit.errors import DispatchFailure, GleitzeitError
from gleitzeit.settings import DEFAULT_DATABASE_URL, Settings
from gleitzeit.worker import create_app
from gleitzeit.workflow import Workflow

log = logging.getLogger(__name__)

MEMORY_URL = "memory://localhost/"
MEMORY_POLLING_INTERVAL = 0.005
#: longest wait of the in-process worker for a message before it looks whether to stop
MEMORY_WAKE_SECONDS = 0.02
WORKER_START_TIMEOUT = 30.0


class MemoryTransport(memory.Transport):
    """kombu's in-memory transport, whose wait for a message ends within
    ``MEMORY_WAKE_SECONDS``.

    Celery's worker loop for transports without an event loop waits for messages up to
    2 s a round and looks whether it was stopped only between rounds: every embedded run
    spent those 2 s on its way out, after its results were printed.
    """

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        if timeout is not None:
            timeout = min(timeout, MEMORY_WAKE_SECONDS)
        return super().drain_events(connection, timeout=timeout)  # type: ignore[no-untyped-call]


def embedded_app(settings: Settings, *, broker_url: str | None = None) -> Celery:
    """A gleitzeit Celery app on the in-memory transport, or on ``broker_url`` if given."""
    url = broker_url or MEMORY_URL
    app = create_app(replace(settings, broker_url=url), main="gleitzeit-embedded")
    # Celery prefers CELERY_BROKER_URL from the environment to its broker_url setting,
    # and its read and write URL settings to both
    app.conf.broker_url = app.conf.broker_read_url = app.conf.broker_write_url = url
    if broker_url is None:
        app.conf.broker_transport = MemoryTransport
        app.conf.broker_transport_options = {"polling_interval": MEMORY_POLLING_INTERVAL}
    app.conf.task_always_eager = False
    return app


@contextmanager
def embedded_worker(
    app: Celery, *, concurrency: int | None = None, queues: Iterable[str] = ()
) -> Iterator[None]:
    """Run a Celery worker for ``app`` on a thread until the block ends, consuming the
    default queue and ``queues`` (those the workflow's tasks name: nobody else would)."""
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
        queues=sorted({app.conf.task_default_queue, *queues}),
    )
    thread = threading.Thread(target=worker.start, name="gleitzeit-embedded-worker", daemon=True)
    thread.start()
    if not ready.wait(timeout=WORKER_START_TIMEOUT):
        worker.stop(in_sighandler=False)
        raise GleitzeitError(
            f"the embedded Celery worker did not start within {WORKER_START_TIMEOUT:g} s"
        )
    try:
        yield
    finally:
        worker.stop(in_sighandler=False)
        thread.join(timeout=WORKER_START_TIMEOUT)


def queues_of(workflow: Workflow) -> set[str]:
    """The queues ``workflow``'s tasks are sent to, besides Celery's default queue."""
    return {spec.queue for spec in workflow.specs if spec.queue}


def _reach_broker(app: Celery, url: str) -> None:
    """Fail at once, not after the worker's start timeout, when the broker does not answer."""
    conn = app.connection_for_write()
    try:
        conn.ensure_connection(max_retries=1)
    except (OperationalError, OSError) as exc:
        shown = maybe_sanitize_url(url)
        raise DispatchFailure(f"cannot reach the broker at {shown}: {exc}") from exc
    finally:
        conn.release()


@contextmanager
def embedded_client(
    database_url: str | None = None,
    *,
    broker_url: str | None = None,
    concurrency: int | None = None,
    queues: Iterable[str] = (),
) -> Iterator[Client]:
    """A :class:`Client` whose runs execute on an in-process worker.

    The store is ``database_url`` (default ``sqlite:///gleitzeit.db``); messages go
    through memory unless ``broker_url`` names a broker. The environment's
    ``GLEITZEIT_DATABASE_URL`` and ``CELERY_BROKER_URL`` are not used. The worker
    consumes Celery's default queue and ``queues``: give every ``queue=`` the workflows
    name (:func:`queues_of`), or their tasks wait for ever.
    """
    settings = Settings.from_env(database_url=database_url or DEFAULT_DATABASE_URL)
    app = embedded_app(settings, broker_url=broker_url)
    if broker_url is not None:
        _reach_broker(app, broker_url)
    with embedded_worker(app, concurrency=concurrency, queues=queues):
        yield Client(app=app, settings=app.conf.gleitzeit_settings)
