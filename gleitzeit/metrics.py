"""Prometheus metrics of a whole deployment, read from the store at each scrape.

The store sees every worker, so one exporter (``gleitzeit metrics``) shows them all.
:class:`StoreCollector` is a collector any registry can take (an HTTP API mounts the
same one at ``/metrics``). At each scrape it reads, in one read-only transaction:

- gauges counted from indexes: runs and tasks in a state that is not final, ledger rows
  not yet published, the processes the store has seen;
- the rows recorded since the last scrape, found by a cursor over an indexed column
  (the history's event id, the time an attempt ended, the time a message went out),
  which feed counters and histograms: a scrape costs what happened since the last one.

Counters are running totals kept by the exporter, seeded once as it starts by one read
of all history (:func:`gleitzeit.store.observe.totals`), so they count over all time and
never go down while the exporter lives; a restarted exporter seeds them again. Histograms
observe what ended since the exporter started. Rows are read once they are
``metrics_settle_seconds`` old, so that a scrape never passes over a transaction that
commits after it.

A scrape that cannot reach the store still answers: ``gleitzeit_store_up 0`` and the
counters as last counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from gleitzeit.errors import StorageFailure
from gleitzeit.health import MISSED_INTERVALS, first_line
from gleitzeit.settings import Settings
from gleitzeit.store import Store, observe
from gleitzeit.store import processes as process_rows
from gleitzeit.store.engine import engine_for, sqlite_file_missing
from gleitzeit.store.processes import RECONCILER, WORKER, ProcessRecord

log = logging.getLogger(__name__)

#: dependency resolution is a commit and a publish: milliseconds
RESOLUTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: a queue wait goes from nothing to as long as a backlog lasts
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
#: task bodies, from a function call to a long job
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600)
#: rows of each kind read by one scrape at most; the rest by the next ones
SCRAPE_BATCH = 50_000

_RUN_ENDS = {"run_succeeded": "succeeded", "run_failed": "failed", "run_cancelled": "cancelled"}


class _Histogram:
    """Bucket counts and a sum per label set, as Prometheus' client keeps them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        value = max(0.0, value)
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        counts[index] += 1
        total[0] += value

    def family(self, name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=list(labels))
        for key, (counts, total) in sorted(self.series.items()):
            cumulative, buckets = 0, []
            bounds = [*map(floatToGoString, self.bounds), "+Inf"]
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(key), buckets, total[0])
        return family


@dataclass
class _Totals:
    """The exporter's running totals and the cursors up to which they count."""

    seeded: bool = False
    event_cursor: int = 0
    ended_cursor: float = 0.0
    published_cursor: float = 0.0
    runs_started: Counter[str] = field(default_factory=Counter)
    runs_ended: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    dispatches: int = 0
    republishes: int = 0
    resolution: _Histogram = field(default_factory=lambda: _Histogram(RESOLUTION_BUCKETS))
    queue_wait: _Histogram = field(default_factory=lambda: _Histogram(QUEUE_WAIT_BUCKETS))
    duration: _Histogram = field(default_factory=lambda: _Histogram(DURATION_BUCKETS))
    #: label sets of the gauges seen so far: shown as 0 once none is left
    runs_seen: set[tuple[str, str]] = field(default_factory=set)

    def count_event(self, type_: str, workflow: str | None, n: int = 1) -> None:
        workflow = workflow or ""
        if type_ == "run_submitted":
            self.runs_started[workflow] += n
        elif type_ in _RUN_ENDS:
            self.runs_ended[workflow, _RUN_ENDS[type_]] += n
        elif type_ == "task_retrying":
            self.retries[workflow] += n


@dataclass(frozen=True)
class _Read:
    """What one scrape read from the store, applied to the totals once it all succeeded."""

    now: float
    until: float
    runs: list[Any]
    tasks: list[Any]
    unpublished: int
    processes: list[ProcessRecord]
    seed: observe.Totals | None = None
    event_cursor: int = 0
    window: observe.Window | None = None


class StoreCollector(Collector):
    """The deployment's metrics from its store, read at each scrape (thread-safe)."""

    def __init__(self, settings: Settings, *, batch: int = SCRAPE_BATCH) -> None:
        self.settings = settings
        self.batch = batch
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._totals = _Totals()
        #: seconds the last scrape spent in the store (for tests and the scrape's gauge)
        self.last_read_seconds = 0.0

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the store

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            began = time.perf_counter()
            read = self._read()
            self.last_read_seconds = time.perf_counter() - began
            if read is not None:
                self._apply(read)
            yield from self._families(read)

    # -- reading -------------------------------------------------------------------------

    def _read(self) -> _Read | None:
        missing = sqlite_file_missing(self.settings.database_url)
        if missing:
            log.warning("metrics: store unreachable: no SQLite database at %s", missing)
            return None
        try:
            if self._store is None:
                self._store = Store(engine_for(self.settings.database_url), retry_seconds=0.0)
            return self._store.read_only(self._read_in)
        except (StorageFailure, SQLAlchemyError) as exc:
            log.warning("metrics: store unreachable: %s", first_line(exc))
            return None

    def _read_in(self, conn: Connection) -> _Read:
        now = observe.now(conn)
        until = now - self.settings.metrics_settle_seconds
        totals = self._totals
        found = _Read(
            now=now,
            until=until,
            runs=observe.active_runs(conn),
            tasks=observe.active_tasks(conn),
            unpublished=observe.unpublished(conn),
            processes=process_rows.read(conn),
        )
        if not totals.seeded:
            cursor = observe.last_event_id(conn)
            seed = observe.totals(conn, event_until=cursor, until=until)
            return replace(found, seed=seed, event_cursor=cursor)
        window = observe.window(
            conn,
            event_after=totals.event_cursor,
            ended_after=totals.ended_cursor,
            published_after=totals.published_cursor,
            until=until,
            limit=self.batch,
        )
        return replace(found, window=window)

    # -- counting ------------------------------------------------------------------------

    def _apply(self, read: _Read) -> None:
        totals = self._totals
        if read.seed is not None:
            self._apply_seed(read.seed, read.event_cursor, read.until)
        elif read.window is not None:
            self._apply_events(read.window.events, read.until)
            self._apply_attempts(read.window.attempts)
            self._apply_dispatches(read.window.dispatches)
        totals.runs_seen.update((row[0], row[1]) for row in read.runs)

    def _apply_seed(self, seed: observe.Totals, cursor: int, until: float) -> None:
        totals = self._totals
        for type_, workflow, n in seed.events:
            totals.count_event(type_, workflow, n)
        for task, state, n in seed.attempts:
            totals.attempts[task, state] += n
        totals.dispatches = seed.published
        totals.republishes = seed.republished
        totals.event_cursor = cursor
        totals.ended_cursor = totals.published_cursor = until
        totals.seeded = True

    def _apply_events(self, rows: Sequence[Any], until: float) -> None:
        totals = self._totals
        for row in rows:
            if row.created_at > until:
                break  # younger than the settle time: the next scrape takes it and what follows
            totals.count_event(row.type, row.name)
            totals.event_cursor = row.id

    def _apply_attempts(self, rows: Sequence[Any]) -> None:
        totals = self._totals
        for row in rows:
            totals.attempts[row.name, row.state] += 1
            totals.duration.observe((row.name,), row.finished_at - row.started_at)
            if row.published_at is not None:
                totals.queue_wait.observe((row.name,), row.started_at - row.published_at)
            totals.ended_cursor = row.finished_at

    def _apply_dispatches(self, rows: Sequence[Any]) -> None:
        totals = self._totals
        for row in rows:
            if row.publish_count > 1:
                totals.republishes += 1
            else:
                totals.dispatches += 1
                if row.attempt == 1:
                    totals.resolution.observe((), row.published_at - row.created_at)
            totals.published_cursor = row.published_at

    # -- the metric families -------------------------------------------------------------

    def _families(self, read: _Read | None) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "gleitzeit_store_up",
            "1 when the last scrape read the store, 0 when it could not reach it",
            value=0 if read is None else 1,
        )
        yield GaugeMetricFamily(
            "gleitzeit_scrape_store_seconds",
            "Seconds the last scrape spent reading the store",
            value=self.last_read_seconds,
        )
        if read is not None:
            yield from _gauges(read, self._totals.runs_seen, self.settings)
        yield from self._counters()
        yield from self._histograms()

    def _counters(self) -> Iterator[Metric]:
        totals = self._totals
        started = CounterMetricFamily(
            "gleitzeit_runs_started", "Runs submitted", labels=["workflow"]
        )
        for workflow, n in sorted(totals.runs_started.items()):
            started.add_metric([workflow], n)
        yield started
        ended = CounterMetricFamily(
            "gleitzeit_runs_ended", "Runs that ended, by end state", labels=["workflow", "state"]
        )
        for (workflow, state), n in sorted(totals.runs_ended.items()):
            ended.add_metric([workflow, state], n)
        yield ended
        retries = CounterMetricFamily(
            "gleitzeit_task_retries",
            "Failed attempts that are tried again (the task's retries, a lost worker)",
            labels=["workflow"],
        )
        for workflow, n in sorted(totals.retries.items()):
            retries.add_metric([workflow], n)
        yield retries
        attempts = CounterMetricFamily(
            "gleitzeit_task_attempts",
            "Attempts that ended, by task name and outcome",
            labels=["task", "outcome"],
        )
        for (task, outcome), n in sorted(totals.attempts.items()):
            attempts.add_metric([task, outcome], n)
        yield attempts
        yield CounterMetricFamily(
            "gleitzeit_dispatches", "Attempts published to the broker", value=totals.dispatches
        )
        yield CounterMetricFamily(
            "gleitzeit_republishes",
            "Attempts published again (their first publish went unrecorded)",
            value=totals.republishes,
        )

    def _histograms(self) -> Iterator[Metric]:
        totals = self._totals
        yield totals.resolution.family(
            "gleitzeit_resolution_latency_seconds",
            "From the commit that made a task ready (its last parent's success, or its run's "
            "submit) to its first attempt's message handed to the broker",
            [],
        )
        yield totals.queue_wait.family(
            "gleitzeit_queue_wait_seconds",
            "From an attempt's message handed to the broker to its start, by task name",
            ["task"],
        )
        yield totals.duration.family(
            "gleitzeit_task_duration_seconds",
            "From an attempt's start to its end, by task name",
            ["task"],
        )


def _gauges(read: _Read, runs_seen: set[tuple[str, str]], settings: Settings) -> Iterator[Metric]:
    runs = GaugeMetricFamily(
        "gleitzeit_runs", "Runs not ended, by workflow name and state", labels=["workflow", "state"]
    )
    counted = {(name, state): n for name, state, n in read.runs}
    for key in sorted(runs_seen | set(counted)):
        runs.add_metric(list(key), counted.get(key, 0))
    yield runs
    tasks = GaugeMetricFamily("gleitzeit_tasks", "Tasks not ended, by state", labels=["state"])
    by_state = {state: n for state, n in read.tasks}
    for state in observe.ACTIVE_TASK_STATES:
        tasks.add_metric([state], by_state.get(state, 0))
    yield tasks
    yield GaugeMetricFamily(
        "gleitzeit_dispatches_unpublished",
        "Attempts claimed whose message is not (yet) recorded as published",
        value=read.unpublished,
    )
    yield from _reconciler_gauges([p for p in read.processes if p.kind == RECONCILER])
    live_after = MISSED_INTERVALS * settings.worker_heartbeat_interval
    workers = [p for p in read.processes if p.kind == WORKER]
    seen = GaugeMetricFamily(
        "gleitzeit_workers",
        f"Workers by whether they were seen in the last {MISSED_INTERVALS} heartbeat intervals",
        labels=["state"],
    )
    live = sum(1 for worker in workers if worker.age <= live_after)
    seen.add_metric(["live"], live)
    seen.add_metric(["gone"], len(workers) - live)
    yield seen


def _reconciler_gauges(found: list[ProcessRecord]) -> Iterator[Metric]:
    details = found[0].details if found else {}
    repairs = CounterMetricFamily(
        "gleitzeit_reconciler_repairs", "Repairs the reconciler applied, by kind", labels=["kind"]
    )
    for kind, n in sorted(details.get("repairs", {}).items()):
        repairs.add_metric([kind], n)
    yield repairs
    yield CounterMetricFamily(
        "gleitzeit_reconciler_passes", "Passes of the reconciler", value=details.get("passes", 0)
    )
    yield GaugeMetricFamily(
        "gleitzeit_stuck_runs",
        "Runs the reconciler's last pass found with work to repair",
        value=details.get("stuck", 0),
    )
    if found:
        yield GaugeMetricFamily(
            "gleitzeit_reconciler_last_pass_timestamp_seconds",
            "When the reconciler's last pass ended (the database's clock, epoch seconds)",
            value=found[0].last_seen,
        )
        yield GaugeMetricFamily(
            "gleitzeit_reconciler_last_pass_age_seconds",
            "Seconds since the reconciler's last pass ended, by the database's clock",
            value=found[0].age,
        )


def registry_for(settings: Settings) -> tuple[CollectorRegistry, StoreCollector]:
    """A registry with the deployment's collector on it, to serve or to mount."""
    registry = CollectorRegistry(auto_describe=False)
    collector = StoreCollector(settings)
    registry.register(collector)
    return registry, collector


class MetricsServer:
    """The HTTP server of ``gleitzeit metrics``, serving ``/metrics`` on a thread."""

    def __init__(self, server: Any, thread: threading.Thread, collector: StoreCollector) -> None:
        self.server = server
        self.thread = thread
        self.collector = collector

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def wait(self) -> None:
        while self.thread.is_alive():
            self.thread.join(timeout=1.0)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 9808
) -> MetricsServer:
    """Serve the deployment's metrics on ``host:port``; ``OSError`` when it cannot listen."""
    registry, collector = registry_for(settings)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, collector)
