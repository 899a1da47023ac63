"""Figures only one process knows: its circuit breaker and the size of its publishes.

Celery users read such figures per worker. A worker serves them on its own port when
``GLEITZEIT_WORKER_METRICS_PORT`` is set. Under the prefork pool the pool's processes,
which publish, are not the process that serves: set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty folder of the worker's own (prometheus_client's multiprocess mode) and every pool
process writes its figures there, which the worker's main process sums as it serves. The
store-wide figures are :mod:`gleitzeit.metrics`'s.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pybreaker
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, multiprocess
from prometheus_client.exposition import start_http_server

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: the states of a breaker, as pybreaker names them
BREAKER_STATES = ("closed", "open", "half-open")

BREAKER_STATE = Gauge(
    "gleitzeit_circuit_breaker_state",
    "1 for the state this process's circuit breaker on the broker is in, 0 for the others",
    ["state"],
    multiprocess_mode="liveall",
)
PUBLISH_BATCH = Histogram(
    "gleitzeit_publish_batch_size",
    "Messages handed to the broker by one publish (a success's children, a submit's roots)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
)


def show_breaker_state(state: str) -> None:
    for name in BREAKER_STATES:
        BREAKER_STATE.labels(name).set(1 if name == state else 0)


class BreakerStates(pybreaker.CircuitBreakerListener):
    """Shows a breaker's state in :data:`BREAKER_STATE` as it changes."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        show_breaker_state(str(new_state.name))


def registry() -> CollectorRegistry:
    """What a worker serves: the sum of its pool's processes in multiprocess mode, else
    this process's own figures."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    found = CollectorRegistry()
    multiprocess.MultiProcessCollector(found)  # type: ignore[no-untyped-call]
    return found


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve this worker's process-local figures; ``None`` (logged) when the port is taken."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry())
    except OSError as exc:
        log.error("gleitzeit: cannot serve worker metrics on %s:%s: %s", host, port, exc)
        return None
    return server


def process_gone(pid: int) -> None:
    """A pool process ended: its live gauges go with it (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
