"""Benchmark: gleitzeit beside plain Celery, Celery canvas and celery-dyrygent, shape by shape.

    .venv/bin/python scripts/bench.py [--store sqlite|postgresql|both] [--repeat 3]
        [--shapes wide,chain,layered,fanin,random500,random,many,latency,resolver] [--scale 1.0]
        [--json bench-results.json] [--postgres-url URL] [--seed 42] [--metrics]

Needs ``redis-server`` on PATH and, for the Celery-side DAG contender, ``celery-dyrygent``
(``pip install celery-dyrygent``; without it those rows say "n/a" and why). The PostgreSQL store
uses ``--postgres-url`` or ``GLEITZEIT_TEST_POSTGRES_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/test``): gleitzeit's tables in that database are reused
(created there if missing) and the rows of every run made here are deleted at the end. The SQLite
store is a new file in a temporary directory. ``--scale 0.1`` shrinks every size for a quick run.
``--metrics`` measures with metrics on: ``gleitzeit metrics`` runs in a process of its own and
the worker serves its own figures (``PROMETHEUS_MULTIPROC_DIR``), both scraped every
``--scrape-interval`` seconds (1 s, harsher than Prometheus' usual 15 s) throughout.

Setup, the same for every contender: a private redis-server on a free loopback port (db 0 the
broker, db 1 Celery's result backend, set with ``CELERY_RESULT_BACKEND`` in the environment) and,
per store, one worker ``celery -A gleitzeit.worker worker -I scripts.bench_tasks -P prefork -c 2``
running no-op tasks (``scripts/bench_tasks.py``). After a warm-up, each shape runs ``--repeat``
times; within a repetition every contender runs once, in an order rotated each repetition. The
figure of a contender is the median of its repetitions; "ratio" is that median divided by the
median of the shape's Celery reference contender (marked ``*``) measured on the same worker in the
same store pass (above 1: slower than Celery). Callers wait with the same poll interval
(``--poll``): ``run.wait(interval=)`` for gleitzeit, ``.get(interval=)`` for Celery.
Graphs are built before the clock starts; the clock covers submitting (validation, store inserts,
publishing) and waiting for the end.

Shapes and figures:

1. ``wide``: N=1,000 independent no-ops. gleitzeit (one run of N root tasks) vs a plain ``group``
   of the same no-ops (the floor). Seconds and tasks/s.
2. ``chain``: 200 hops, each task gets the previous result plus one. gleitzeit (references
   ``${prev.result}``) vs canvas ``chain`` (``.get()`` as is, which re-checks all 199 parent
   results at every poll, and with ``follow_parents=False``).
   The rate column is the per-hop latency: total / 200, in ms.
3. ``layered``: 10 layers x 100 no-ops, each task with two random parents (seeded) in the layer
   before; no data passed. gleitzeit (``depends_on``); canvas as ``chain(group(layer1), ...,
   group(layer10), sink)``, which Celery turns into a chain of chords so that each layer waits for
   the whole previous one (the sink, one extra no-op, gives the caller an ``AsyncResult``), waited
   for with ``.get()`` (follows its parents: checks every parent result each poll) and with
   ``.get(follow_parents=False)``; celery-dyrygent on the exact same graph (its workflow processor
   task runs on the worker; it ticks, re-scheduling itself, every second: ``set_retry_policy(
   'random', 1, 1)``, the shortest its policy accepts: it draws whole seconds).
4. ``fanin``: 1 -> 1,000 -> 1, the join takes every result by reference. gleitzeit vs a plain
   ``group`` of the 1,000 no-ops (reference).
5. ``random``: a random DAG of 5,000 no-ops, task i with two parents drawn (seeded) from tasks
   0..i-1 (one root; depth about 33). gleitzeit vs a plain ``group`` of 5,000 no-ops (floor) and
   celery-dyrygent on the same DAG. Besides time: store statements and commits per finished task
   (below) and the peak RSS of the worker processes: ``VmHWM`` from ``/proc/<pid>/status`` of the
   worker's main process and its pool children, reset before each run by writing ``5`` to
   ``/proc/<pid>/clear_refs``; "peak rss" is the sum of the per-process peaks (an upper bound of
   the simultaneous peak), in MiB. A reset peak starts at the current RSS, and Python keeps memory
   an earlier contender's run made it allocate, so "rss at start" (the sum of ``VmRSS`` at the
   reset) is shown beside it: peak minus start is what the run itself added. ``random500`` is
   the same at 500 tasks, to show that statements per task do not grow with the graph.
6. ``many``: 100 runs of 20 tasks (start -> 18 no-ops -> join by reference) submitted back to back,
   then waited for; the time until all have ended. Reference: the same as canvas
   ``chain(start, chord(18 no-ops, join))``, 100 of them.
7. ``latency``: dependency-resolution latency of gleitzeit, from the store after the runs of the
   shapes above (if none ran in this pass, it runs the layered DAG ``--repeat`` times): for every
   task with parents, ``gz_dispatches.published_at`` of its first attempt minus the latest
   ``gz_tasks.finished_at`` of its parents (both from the database clock; SQLite's has 1 ms
   resolution). p50, p99 and max in ms, per shape. A worker publishes the children a task
   released after the commit that released them, in kombu publish batches (the first child
   alone, then batches doubling up to 64), and stamps each ``published_at`` with the moment its
   batch reached the broker (written with its next transaction), so for a fan-out the figure
   grows along the siblings. Its Celery counterpart, the floor of any fan-out through Celery: in
   the ``fanin`` shape's plain ``group`` of 1,000, the time from ``apply_async`` to each message
   sent (``after_task_publish`` in the caller), as ``celery group`` rows.
8. ``resolver``: a 10,000-task random DAG (as in 5). ``gleitzeit validate``: ``wf.validate()``
   (DependencyResolver: graph, references, cycles); ``gleitzeit submit``: ``Client.submit``
   without waiting (validation again, planning, one insert transaction, publishing the root);
   reference ``dyrygent submit``: ``Workflow.apply_async()`` of the same graph (serializing it
   into the processor's message). Tasks are routed to a queue no worker consumes, which is purged
   after each repetition; building the graph objects is reported as ``build`` in the notes.

Store statements per task: no pg_stat_statements on the shared server (and it would need a
server restart and would count other users), so the worker counts for itself. The worker is
started with ``BENCH_COUNT_SQL=1``; ``scripts/bench_tasks.py`` then hooks SQLAlchemy's
``before_cursor_execute`` and ``commit`` events on the ``Engine`` class, counting into
``multiprocessing.Value`` counters made before the pool forks, so both children add to them; the
plain task ``bench.sql_count`` reads them. The difference around a run divided by its tasks is
"stmts/task" (SQL statements sent, ``executemany`` counted once, SQLite's explicit ``BEGIN``
left out) and "commits/task". The caller's statements during ``submit`` are counted the same way
in this process ("submit stmts").

Caveats: everything shares the machine's cores (caller, redis-server, the worker, PostgreSQL),
so figures move with its load; the load average before and after each pass is printed and kept
in the JSON. ``--store both`` without a PostgreSQL URL benchmarks SQLite only, with a note.
Rows deleted from the shared PostgreSQL tables leave dead tuples behind: on a server with
autovacuum off, ``VACUUM`` the ``gz_*`` tables between repeated benchmark runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from celery import Celery, chain, chord, group  # noqa: E402
from celery.signals import after_task_publish  # noqa: E402
from sqlalchemy import delete, select  # noqa: E402

import gleitzeit  # noqa: E402
from gleitzeit import Client, Workflow  # noqa: E402
from gleitzeit.settings import Settings  # noqa: E402
from gleitzeit.store import Store  # noqa: E402
from gleitzeit.store.tables import (  # noqa: E402
    attempts,
    dispatches,
    events,
    run_definitions,
    runs,
    tasks,
)
from gleitzeit.worker import create_app  # noqa: E402
from scripts import bench_tasks as bt  # noqa: E402
from tests.services import CeleryWorker, RedisServer, free_port, wait_until  # noqa: E402

POSTGRES_ENV = "GLEITZEIT_TEST_POSTGRES_URL"
TASKS_MODULE = "scripts.bench_tasks"
CONCURRENCY = 2
#: a queue no worker consumes: the resolver shape's messages wait there until purged
PARKED_QUEUE = "bench-parked"
#: celery-dyrygent's tick: its retry policy draws whole seconds, at least 1
DYRYGENT_TICK = 1
SHAPES = (
    "wide",
    "chain",
    "layered",
    "fanin",
    "random500",
    "random",
    "many",
    "latency",
    "resolver",
)
LAYERS = 10
MANY_FANOUT = 18

GLEITZEIT = "gleitzeit"
GROUP = "celery group"
DYRYGENT = "celery-dyrygent"

#: node id -> its parents' ids; insertion order is a topological order
Dag = dict[str, list[str]]

CALLER_SQL = bt.SqlCounter()
CALLER_SQL.install()


# ------------------------------------------------------------------------------ the results


@dataclass
class Measurement:
    """One timed run of one contender."""

    seconds: float
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class Contender:
    """A way of running a shape; ``reference`` marks the Celery contender ratios divide by."""

    name: str
    run: Callable[[], Measurement]
    reference: bool = False
    #: set when the contender cannot run at all
    unavailable: str | None = None


@dataclass
class Series:
    """The repetitions of one contender on one shape and store."""

    shape: str
    store: str
    contender: str
    tasks: int
    reference: bool
    #: divide the median by this for the per-hop column (chain), else 0
    hops: int = 0
    seconds: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)
    na: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and not self.na else None

    def add(self, measurement: Measurement) -> None:
        self.seconds.append(measurement.seconds)
        for key, value in measurement.extras.items():
            self.extras.setdefault(key, []).append(value)

    def extra_medians(self) -> dict[str, float]:
        return {key: statistics.median(values) for key, values in self.extras.items()}

    def summary(self, reference: Series | None) -> dict[str, Any]:
        median = self.median
        ref = reference.median if reference else None
        return {
            "shape": self.shape,
            "store": self.store,
            "contender": self.contender,
            "tasks": self.tasks,
            "reference": self.reference,
            "seconds": self.seconds,
            "median_seconds": median,
            "tasks_per_second": self.tasks / median if median else None,
            "ms_per_hop": 1000 * median / self.hops if median and self.hops else None,
            "ratio_to_reference": median / ref if median and ref else None,
            "extras": self.extras,
            "extra_medians": self.extra_medians(),
            "n/a": self.na,
        }


@dataclass
class Latency:
    """Dependency-resolution latencies of the gleitzeit runs of one shape, in seconds; or,
    for ``celery group``, how long after ``apply_async`` was called each message was sent."""

    shape: str
    store: str
    values: list[float]
    contender: str = GLEITZEIT

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "shape": self.shape,
            "store": self.store,
            "contender": self.contender,
            "count": len(self.values),
        }
        if len(self.values) >= 2:
            cuts = statistics.quantiles(self.values, n=100, method="inclusive")
            data.update(p50_ms=1000 * cuts[49], p99_ms=1000 * cuts[98])
            data.update(max_ms=1000 * max(self.values), mean_ms=1000 * statistics.mean(self.values))
        return data


# ------------------------------------------------------------------------------- the graphs


def layered_dag(layers: int, width: int, rng: random.Random) -> Dag:
    """``layers`` x ``width`` nodes, each with two parents drawn from the layer before."""
    dag: Dag = {}
    for layer in range(layers):
        for j in range(width):
            parents = [] if layer == 0 else rng.sample(range(width), min(2, width))
            dag[f"l{layer}_{j}"] = [f"l{layer - 1}_{p}" for p in sorted(parents)]
    return dag


def random_dag(n: int, rng: random.Random) -> Dag:
    """``n`` nodes; node i has two parents drawn from nodes 0..i-1 (node 1 has one)."""
    return {f"t{i}": [f"t{p}" for p in sorted(rng.sample(range(i), min(2, i)))] for i in range(n)}


def dag_layers(dag: Dag, layers: int) -> list[list[str]]:
    """The nodes of a layered DAG, layer by layer (ids ``l<layer>_<j>``)."""
    return [[node for node in dag if node.startswith(f"l{layer}_")] for layer in range(layers)]


def gz_dag_workflow(name: str, dag: Dag, queue: str | None = None) -> Workflow:
    wf = Workflow(name)
    for i, (node, parents) in enumerate(dag.items()):
        wf.task(node, bt.gz_noop, params={"i": i}, depends_on=parents, queue=queue)
    return wf


def gz_wide_workflow(n: int) -> Workflow:
    wf = Workflow("bench-wide")
    for i in range(n):
        wf.task(f"t{i}", bt.gz_noop, params={"i": i})
    return wf


def gz_chain_workflow(hops: int) -> Workflow:
    wf = Workflow("bench-chain")
    previous = wf.task("s0", bt.gz_step, params={"x": 0})
    for k in range(1, hops):
        previous = wf.task(f"s{k}", bt.gz_step, params={"x": previous.result})
    return wf


def gz_fanin_workflow(n: int, name: str = "bench-fanin") -> Workflow:
    """``start -> t1..tn -> join``, ``join`` referencing every ``ti``'s result."""
    wf = Workflow(name)
    start = wf.task("start", bt.gz_start)
    fan = [
        wf.task(f"t{i}", bt.gz_noop, params={"i": i}, depends_on=[start]) for i in range(1, n + 1)
    ]
    wf.task("join", bt.gz_join, params={"values": [handle.result for handle in fan]})
    return wf


def noop_sig(app: Celery, i: int) -> Any:
    return app.signature(bt.PLAIN_NOOP, args=(i,), immutable=True)


def canvas_chain(app: Celery, hops: int) -> Any:
    steps = [app.signature(bt.PLAIN_STEP, args=(0,))]
    steps += [app.signature(bt.PLAIN_STEP) for _ in range(hops - 1)]
    return chain(*steps, app=app)


def canvas_layers(app: Celery, dag: Dag, layers: int) -> Any:
    index = {node: i for i, node in enumerate(dag)}
    groups = [
        group([noop_sig(app, index[node]) for node in layer], app=app)
        for layer in dag_layers(dag, layers)
    ]
    return chain(*groups, noop_sig(app, -1), app=app)


def canvas_fanin(app: Celery, n: int) -> Any:
    header = [noop_sig(app, i) for i in range(1, n + 1)]
    join = app.signature(bt.PLAIN_JOIN)
    return chain(noop_sig(app, 0), chord(header, join, app=app), app=app)


def dyrygent_workflow(app: Celery, dag: Dag, queue: str | None = None) -> Any:
    """celery-dyrygent's Workflow over ``dag``: one frozen plain no-op signature per node."""
    from celery_dyrygent.workflows import Workflow as DyrygentWorkflow

    options = {"queue": queue} if queue else None
    wf = DyrygentWorkflow(options=options)
    wf.set_retry_policy("random", DYRYGENT_TICK, DYRYGENT_TICK)
    nodes: dict[str, Any] = {}
    for i, (node, parents) in enumerate(dag.items()):
        signature = noop_sig(app, i)
        signature.freeze()
        nodes[node] = wf.add_signature(signature, [nodes[p] for p in parents])
    return wf


def dyrygent_missing() -> str | None:
    if bt.dyrygent_processor_task is None:
        return "celery-dyrygent is not installed (pip install celery-dyrygent)"
    return None


# -------------------------------------------------------------------------- worker metrics


def worker_pids(worker: CeleryWorker) -> list[int]:
    return [worker.pid, *worker.child_pids()]


def reset_peak_rss(pids: Sequence[int]) -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of each process (Linux 4.0+)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_mib(pids: Sequence[int], field: str) -> float:
    """The sum of ``field`` (``VmHWM``: peak, ``VmRSS``: now) over ``pids``, in MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def with_peak_rss(
    worker: CeleryWorker, run: Callable[[], Measurement]
) -> Callable[[], Measurement]:
    """``run``, with the worker's RSS at its start (``rss_start_mib``) and its peak RSS during
    it (``rss_mib``) added to its extras. The peak cannot be lower than the start: memory that
    earlier runs left allocated in the worker counts, hence the start figure beside it."""

    def measured() -> Measurement:
        pids = worker_pids(worker)
        reset_peak_rss(pids)
        start = rss_mib(pids, "VmRSS")
        measurement = run()
        measurement.extras["rss_mib"] = rss_mib(worker_pids(worker), "VmHWM")
        measurement.extras["rss_start_mib"] = start
        return measurement

    return measured


# ------------------------------------------------------------------------------- the session


@dataclass
class Session:
    """One store's pass: its worker, a caller app and client, and the runs made."""

    store: str
    args: argparse.Namespace
    app: Celery
    client: Client
    worker: CeleryWorker
    #: shape -> ids of the gleitzeit runs that ran to their end
    finished_runs: dict[str, list[str]] = field(default_factory=dict)
    #: every run submitted, including parked ones (deleted from PostgreSQL at the end)
    created_runs: list[str] = field(default_factory=list)
    #: shape -> seconds from a group's ``apply_async`` call to each of its messages sent
    group_publish: dict[str, list[float]] = field(default_factory=dict)

    def worker_sql(self) -> dict[str, int]:
        counts = self.app.send_task(bt.SQL_COUNT).get(timeout=30)
        if not counts:
            raise RuntimeError("the worker does not count SQL statements (BENCH_COUNT_SQL)")
        return dict(counts)

    def submit(self, workflow: Workflow) -> tuple[gleitzeit.Run, int]:
        """Submit; return the run and the statements this process sent doing so."""
        before = CALLER_SQL.totals()["statements"]
        run = self.client.submit(workflow)
        self.created_runs.append(run.id)
        return run, CALLER_SQL.totals()["statements"] - before

    def wait(self, run: gleitzeit.Run) -> dict[str, Any]:
        return run.wait(timeout=self.args.timeout, interval=self.args.poll)

    def get(self, result: Any, **options: Any) -> Any:
        return result.get(timeout=self.args.timeout, interval=self.args.poll, **options)


def sql_extras(before: dict[str, int], after: dict[str, int], tasks: int) -> dict[str, float]:
    return {
        "stmts_per_task": (after["statements"] - before["statements"]) / tasks,
        "commits_per_task": (after["commits"] - before["commits"]) / tasks,
    }


def gleitzeit_runner(
    session: Session,
    shape: str,
    build: Callable[[], Workflow],
    check: Callable[[dict[str, Any]], bool],
) -> Callable[[], Measurement]:
    """Submit the workflow ``build`` makes, wait for its end; check its results."""

    def run() -> Measurement:
        workflow = build()
        before = session.worker_sql()
        started = time.perf_counter()
        handle, statements = session.submit(workflow)
        submitted = time.perf_counter()
        results = session.wait(handle)
        elapsed = time.perf_counter() - started
        if not check(results):
            raise RuntimeError(f"run {handle.id} ({shape}) returned wrong results")
        session.finished_runs.setdefault(shape, []).append(handle.id)
        extras = sql_extras(before, session.worker_sql(), len(workflow.specs))
        extras.update(submit_s=submitted - started, submit_stmts=statements)
        return Measurement(elapsed, extras)

    return run


@contextlib.contextmanager
def sends_recorded(into: list[float] | None, started: float) -> Iterator[None]:
    """Add to ``into`` the seconds from ``started`` to each message this process sends."""
    if into is None:
        yield
        return

    def on_sent(**_: Any) -> None:
        into.append(time.perf_counter() - started)

    after_task_publish.connect(on_sent, weak=False)
    try:
        yield
    finally:
        after_task_publish.disconnect(on_sent)


def canvas_runner(
    session: Session,
    build: Callable[[], Any],
    expected: Any,
    *,
    sent_after: list[float] | None = None,
    **get_options: Any,
) -> Callable[[], Measurement]:
    """Apply the canvas ``build`` makes and wait with ``.get(**get_options)``; with
    ``sent_after``, add to it the seconds from ``apply_async`` to each message sent."""

    def run() -> Measurement:
        canvas = build()
        started = time.perf_counter()
        with sends_recorded(sent_after, started):
            result = canvas.apply_async()
        value = session.get(result, **get_options)
        elapsed = time.perf_counter() - started
        if value != expected:
            raise RuntimeError(f"the canvas returned {str(value)[:80]}, not {str(expected)[:80]}")
        return Measurement(elapsed)

    return run


def group_runner(session: Session, n: int, shape: str | None = None) -> Callable[[], Measurement]:
    """N plain no-ops as one ``group``; with ``shape``, when each message was sent is kept."""
    sent = None if shape is None else session.group_publish.setdefault(shape, [])
    return canvas_runner(
        session,
        lambda: group([noop_sig(session.app, i) for i in range(n)]),
        list(range(n)),
        sent_after=sent,
    )


def dyrygent_runner(session: Session, dag: Dag) -> Callable[[], Measurement]:
    """celery-dyrygent's workflow over ``dag``, waited for on its processor task's result."""

    def run() -> Measurement:
        workflow = dyrygent_workflow(session.app, dag)
        started = time.perf_counter()
        result = workflow.apply_async()
        session.get(result)
        elapsed = time.perf_counter() - started
        return Measurement(elapsed)

    return run


def dyrygent_contender(session: Session, dag: Dag) -> Contender:
    missing = dyrygent_missing()
    run = dyrygent_runner(session, dag) if missing is None else _unavailable
    return Contender(DYRYGENT, run, unavailable=missing)


def _unavailable() -> Measurement:
    raise RuntimeError("unavailable")


# ------------------------------------------------------------------------------- the shapes


@dataclass
class ShapePlan:
    """A shape's contenders and sizes; ``after_each`` runs after every repetition."""

    name: str
    tasks: int
    contenders: list[Contender]
    hops: int = 0
    after_each: Callable[[], None] | None = None


def scaled(args: argparse.Namespace, size: int, minimum: int = 1) -> int:
    return max(minimum, round(size * float(args.scale)))


def plan_wide(session: Session) -> ShapePlan:
    n = scaled(session.args, 1000)
    total = n * (n - 1) // 2
    return ShapePlan(
        "wide",
        n,
        [
            Contender(GROUP, group_runner(session, n), reference=True),
            Contender(
                GLEITZEIT,
                gleitzeit_runner(
                    session, "wide", lambda: gz_wide_workflow(n), lambda r: sum(r.values()) == total
                ),
            ),
        ],
    )


def plan_chain(session: Session) -> ShapePlan:
    hops = scaled(session.args, 200, minimum=2)
    last = f"s{hops - 1}"

    def build() -> Any:
        return canvas_chain(session.app, hops)

    contenders = [
        Contender("canvas chain", canvas_runner(session, build, hops), reference=True),
        Contender(
            "canvas chain, get(follow_parents=False)",
            canvas_runner(session, build, hops, follow_parents=False),
        ),
        Contender(
            GLEITZEIT,
            gleitzeit_runner(
                session, "chain", lambda: gz_chain_workflow(hops), lambda r: r.get(last) == hops
            ),
        ),
    ]
    return ShapePlan("chain", hops, contenders, hops=hops)


def plan_layered(session: Session) -> ShapePlan:
    width = scaled(session.args, 100)
    dag = layered_dag(LAYERS, width, random.Random(session.args.seed))

    def build() -> Any:
        return canvas_layers(session.app, dag, LAYERS)

    contenders = [
        Contender("canvas chord chain", canvas_runner(session, build, -1), reference=True),
        Contender(
            "canvas chord chain, get(follow_parents=False)",
            canvas_runner(session, build, -1, follow_parents=False),
        ),
        dyrygent_contender(session, dag),
        Contender(
            GLEITZEIT,
            gleitzeit_runner(
                session,
                "layered",
                lambda: gz_dag_workflow("bench-layered", dag),
                lambda r: len(r) == len(dag),
            ),
        ),
    ]
    return ShapePlan("layered", len(dag), contenders)


def plan_fanin(session: Session) -> ShapePlan:
    n = scaled(session.args, 1000)
    total = n * (n + 1) // 2
    return ShapePlan(
        "fanin",
        n + 2,
        [
            Contender(GROUP, group_runner(session, n, "fanin"), reference=True),
            Contender(
                GLEITZEIT,
                gleitzeit_runner(
                    session, "fanin", lambda: gz_fanin_workflow(n), lambda r: r["join"] == total
                ),
            ),
        ],
    )


def plan_random(session: Session, size: int = 5000, shape: str = "random") -> ShapePlan:
    n = scaled(session.args, size, minimum=2)
    dag = random_dag(n, random.Random(session.args.seed))
    gz = gleitzeit_runner(
        session, shape, lambda: gz_dag_workflow(f"bench-{shape}", dag), lambda r: len(r) == n
    )
    dyrygent = dyrygent_contender(session, dag)
    dyrygent.run = with_peak_rss(session.worker, dyrygent.run)
    contenders = [
        Contender(GROUP, with_peak_rss(session.worker, group_runner(session, n)), reference=True),
        dyrygent,
        Contender(GLEITZEIT, with_peak_rss(session.worker, gz)),
    ]
    return ShapePlan(shape, n, contenders)


def many_gleitzeit(session: Session, runs: int) -> Callable[[], Measurement]:
    total = MANY_FANOUT * (MANY_FANOUT + 1) // 2

    def run() -> Measurement:
        workflows = [gz_fanin_workflow(MANY_FANOUT, "bench-many") for _ in range(runs)]
        before = session.worker_sql()
        started = time.perf_counter()
        handles = [session.submit(workflow)[0] for workflow in workflows]
        submitted = time.perf_counter()
        results = [session.wait(handle) for handle in handles]
        elapsed = time.perf_counter() - started
        if any(result["join"] != total for result in results):
            raise RuntimeError("a run of the many shape returned a wrong join")
        session.finished_runs.setdefault("many", []).extend(h.id for h in handles)
        extras = sql_extras(before, session.worker_sql(), runs * (MANY_FANOUT + 2))
        extras["submit_s"] = submitted - started
        return Measurement(elapsed, extras)

    return run


def many_canvas(session: Session, runs: int) -> Callable[[], Measurement]:
    total = MANY_FANOUT * (MANY_FANOUT + 1) // 2

    def run() -> Measurement:
        canvases = [canvas_fanin(session.app, MANY_FANOUT) for _ in range(runs)]
        started = time.perf_counter()
        results = [canvas.apply_async() for canvas in canvases]
        values = [session.get(result) for result in results]
        elapsed = time.perf_counter() - started
        if any(value != total for value in values):
            raise RuntimeError("a canvas of the many shape returned a wrong join")
        return Measurement(elapsed)

    return run


def plan_many(session: Session) -> ShapePlan:
    runs = scaled(session.args, 100)
    contenders = [
        Contender("canvas chain+chord", many_canvas(session, runs), reference=True),
        Contender(GLEITZEIT, many_gleitzeit(session, runs)),
    ]
    return ShapePlan("many", runs * (MANY_FANOUT + 2), contenders)


def resolver_gleitzeit(session: Session, dag: Dag, *, submit: bool) -> Callable[[], Measurement]:
    """Validate (``submit=False``) or submit without waiting a workflow over ``dag``."""

    def run() -> Measurement:
        built = time.perf_counter()
        workflow = gz_dag_workflow("bench-resolver", dag, queue=PARKED_QUEUE)
        started = time.perf_counter()
        extras = {"build_s": started - built}
        if submit:
            _, extras["submit_stmts"] = session.submit(workflow)
        else:
            workflow.validate()
        return Measurement(time.perf_counter() - started, extras)

    return run


def resolver_dyrygent(session: Session, dag: Dag) -> Callable[[], Measurement]:
    def run() -> Measurement:
        built = time.perf_counter()
        workflow = dyrygent_workflow(session.app, dag, queue=PARKED_QUEUE)
        started = time.perf_counter()
        workflow.apply_async(options={"queue": PARKED_QUEUE})
        elapsed = time.perf_counter() - started
        return Measurement(elapsed, {"build_s": started - built})

    return run


def purge_parked(app: Celery) -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(PARKED_QUEUE)


def plan_resolver(session: Session) -> ShapePlan:
    n = scaled(session.args, 10000, minimum=2)
    dag = random_dag(n, random.Random(session.args.seed))
    missing = dyrygent_missing()
    dyrygent = resolver_dyrygent(session, dag) if missing is None else _unavailable
    contenders = [
        Contender("dyrygent submit", dyrygent, reference=True, unavailable=missing),
        Contender("gleitzeit validate", resolver_gleitzeit(session, dag, submit=False)),
        Contender("gleitzeit submit", resolver_gleitzeit(session, dag, submit=True)),
    ]
    return ShapePlan("resolver", n, contenders, after_each=lambda: purge_parked(session.app))


PLANNERS: dict[str, Callable[[Session], ShapePlan]] = {
    "wide": plan_wide,
    "chain": plan_chain,
    "layered": plan_layered,
    "fanin": plan_fanin,
    "random500": lambda session: plan_random(session, 500, "random500"),
    "random": plan_random,
    "many": plan_many,
    "resolver": plan_resolver,
}


# ------------------------------------------------------------------------------ running them


def log(session: Session, message: str) -> None:
    print(f"[{session.store}] {message}", flush=True)


def run_once(session: Session, plan: ShapePlan, contender: Contender, series: Series) -> None:
    """One repetition of one contender; a failure marks the series n/a with the reason."""
    try:
        measurement = contender.run()
    except Exception as exc:  # a contender that breaks is reported, not fatal
        series.na = f"{type(exc).__name__}: {exc}"
        log(session, f"{plan.name} {contender.name} FAILED: {series.na}")
        traceback.print_exc()
        return
    series.add(measurement)
    notes = " ".join(f"{key}={value:.3g}" for key, value in measurement.extras.items())
    log(session, f"{plan.name} {contender.name}: {measurement.seconds:.3f}s {notes}")


def run_shape(session: Session, plan: ShapePlan) -> list[Series]:
    """Every contender ``--repeat`` times, the order rotated each repetition."""
    all_series = {
        c.name: Series(plan.name, session.store, c.name, plan.tasks, c.reference, plan.hops)
        for c in plan.contenders
    }
    for contender in plan.contenders:
        all_series[contender.name].na = contender.unavailable
    for repetition in range(session.args.repeat):
        shift = repetition % len(plan.contenders)
        for contender in plan.contenders[shift:] + plan.contenders[:shift]:
            series = all_series[contender.name]
            if series.na is None:
                run_once(session, plan, contender, series)
        if plan.after_each is not None:
            plan.after_each()
    return list(all_series.values())


def warm_up(session: Session) -> None:
    """One small run of each kind, so no contender pays for first connections and imports."""
    plans = [
        Contender(GROUP, group_runner(session, 100)),
        Contender(
            GLEITZEIT,
            gleitzeit_runner(session, "warm-up", lambda: gz_fanin_workflow(100), lambda r: True),
        ),
        Contender(
            "canvas chain", canvas_runner(session, lambda: canvas_chain(session.app, 10), 10)
        ),
    ]
    if dyrygent_missing() is None:
        plans.append(Contender(DYRYGENT, dyrygent_runner(session, random_dag(3, random.Random(0)))))
    for contender in plans:
        log(session, f"warm-up {contender.name}: {contender.run().seconds:.3f}s")
    session.finished_runs.pop("warm-up", None)


def layered_for_latency(session: Session) -> None:
    """Runs for the latency shape when no other shape left gleitzeit runs behind."""
    dag = layered_dag(LAYERS, scaled(session.args, 100), random.Random(session.args.seed))
    run = gleitzeit_runner(
        session, "layered", lambda: gz_dag_workflow("bench-layered", dag), lambda r: True
    )
    for _ in range(session.args.repeat):
        run()


def run_latency(session: Session) -> list[Latency]:
    if not session.finished_runs:
        layered_for_latency(session)
    store = session.client.store
    found = [
        Latency(shape, session.store, dispatch_latencies(store, run_ids))
        for shape, run_ids in session.finished_runs.items()
    ]
    everything = [value for latency in found for value in latency.values]
    sends = [
        Latency(shape, session.store, values, GROUP)
        for shape, values in session.group_publish.items()
    ]
    return [*found, Latency("all", session.store, everything), *sends]


def dispatch_latencies(store: Store, run_ids: Sequence[str]) -> list[float]:
    """Per task with parents: its first dispatch's published_at - max(parents' finished_at)."""
    latencies: list[float] = []
    with store.engine.connect() as conn:
        for run_id in run_ids:
            finished: dict[str, float] = {}
            parents: dict[str, list[str]] = {}
            rows = conn.execute(
                select(tasks.c.task_id, tasks.c.finished_at, tasks.c.children).where(
                    tasks.c.run_id == run_id
                )
            )
            for row in rows:
                finished[row.task_id] = row.finished_at
                for child in json.loads(row.children):
                    parents.setdefault(child, []).append(row.task_id)
            published = conn.execute(
                select(dispatches.c.task_id, dispatches.c.published_at).where(
                    dispatches.c.run_id == run_id, dispatches.c.attempt == 1
                )
            )
            for sent in published:
                if sent.task_id in parents and sent.published_at is not None:
                    last = max(finished[parent] for parent in parents[sent.task_id])
                    latencies.append(sent.published_at - last)
    return latencies


# ------------------------------------------------------------------------------- the stores


def postgres_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.postgres_url or os.environ.get(POSTGRES_ENV)
    return url


def stores_to_run(args: argparse.Namespace) -> list[str]:
    if args.store != "both":
        if args.store == "postgresql" and not postgres_url(args):
            raise SystemExit(f"--store postgresql needs --postgres-url or {POSTGRES_ENV}")
        return [args.store]
    if postgres_url(args):
        return ["sqlite", "postgresql"]
    print(f"note: no --postgres-url and no {POSTGRES_ENV}; benchmarking sqlite only")
    return ["sqlite"]


def database_url(store: str, workdir: Path, args: argparse.Namespace) -> str:
    if store == "sqlite":
        path = workdir / "bench-store.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    url = postgres_url(args)
    assert url is not None
    return url


def delete_runs(store: Store, run_ids: Sequence[str]) -> None:
    """Delete every row of these runs (the PostgreSQL tables are shared and kept)."""
    chunk = 200
    with store.engine.begin() as conn:
        for start in range(0, len(run_ids), chunk):
            ids = list(run_ids[start : start + chunk])
            for table in (events, dispatches, attempts, tasks, run_definitions):
                conn.execute(delete(table).where(table.c.run_id.in_(ids)))
            conn.execute(delete(runs).where(runs.c.id.in_(ids)))


@contextlib.contextmanager
def open_session(
    store: str, redis: RedisServer, workdir: Path, args: argparse.Namespace
) -> Iterator[Session]:
    """A worker on a fresh store (SQLite) or on the shared tables (PostgreSQL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    url = database_url(store, workdir, args)
    settings = Settings(database_url=url, broker_url=redis.url)
    Store.open(url)  # migrate here once, not racing in the worker's children
    env = {"CELERY_RESULT_BACKEND": redis.url_for(1), bt.COUNT_SQL_ENV: "1"}
    scraped: list[int] = []
    if args.metrics:
        env.update(worker_metrics_env(workdir))
    worker = CeleryWorker.start(
        broker_url=redis.url,
        database_url=url,
        log_dir=workdir,
        include=(TASKS_MODULE,),
        concurrency=CONCURRENCY,
        env=env,
    )
    app = create_app(settings, main="bench-caller")
    # celery-dyrygent and shared tasks resolve through the default app
    app.set_default()
    session = Session(store, args, app, Client(app=app, settings=settings), worker)
    try:
        worker.wait_ready(timeout=60)
        print(f"[{store}] worker pid {worker.pid}, log {worker.log_path}", flush=True)
        with contextlib.ExitStack() as metrics:
            if args.metrics:
                ports = [metrics.enter_context(exporter(url, workdir)), int(env[WORKER_PORT_ENV])]
                metrics.enter_context(scraping(ports, args.scrape_interval, scraped))
            yield session
    finally:
        if args.metrics:
            log(session, f"{len(scraped)} scrapes of the exporter and the worker")
        worker.stop()
        report_worker_errors(session)
        if store == "postgresql" and session.created_runs:
            delete_runs(session.client.store, session.created_runs)
        app.close()


# ------------------------------------------------------------------------------- --metrics

WORKER_PORT_ENV = "GLEITZEIT_WORKER_METRICS_PORT"
GLEITZEIT_CLI = shutil.which("gleitzeit", path=str(Path(sys.executable).parent)) or "gleitzeit"


def worker_metrics_env(workdir: Path) -> dict[str, str]:
    """The worker serves its own figures, summed over its pool (multiprocess mode)."""
    folder = workdir / "prometheus"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return {"PROMETHEUS_MULTIPROC_DIR": str(folder), WORKER_PORT_ENV: str(free_port())}


@contextlib.contextmanager
def exporter(url: str, workdir: Path) -> Iterator[int]:
    """``gleitzeit metrics`` over the store, in a process of its own; yields its port."""
    port = free_port()
    env = {**os.environ, "GLEITZEIT_DATABASE_URL": url}
    with (workdir / "exporter.log").open("wb") as out:
        process = subprocess.Popen(
            [GLEITZEIT_CLI, "metrics", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _scrape(port), timeout=60, message="gleitzeit metrics never answered")
        yield port
    finally:
        process.kill()
        process.wait()


def _scrape(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            answer.read()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def scraping(ports: Sequence[int], interval: float, scraped: list[int]) -> Iterator[None]:
    """Scrape every port every ``interval`` seconds, as Prometheus would, until the end."""
    stop = threading.Event()

    def scrape_all() -> None:
        while not stop.wait(interval):
            scraped.extend(port for port in ports if _scrape(port))

    thread = threading.Thread(target=scrape_all, name="bench-scraper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def report_worker_errors(session: Session) -> None:
    errors = [line for line in session.worker.log_text().splitlines() if "ERROR" in line]
    if errors:
        log(session, f"worker logged {len(errors)} ERROR lines, e.g. {errors[0]}")


@dataclass
class StorePass:
    """What one store's pass measured, with the machine's load average around it."""

    results: list[Series]
    latencies: list[Latency]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def bench_store(
    store: str, redis: RedisServer, workdir: Path, args: argparse.Namespace
) -> StorePass:
    load_before = os.getloadavg()
    with open_session(store, redis, workdir, args) as session:
        log(session, f"load average before: {load_before}")
        warm_up(session)
        results: list[Series] = []
        for shape in args.shapes:
            if shape in PLANNERS:
                results += run_shape(session, PLANNERS[shape](session))
        latencies = run_latency(session) if "latency" in args.shapes else []
        log(session, f"load average after: {os.getloadavg()}")
    return StorePass(results, latencies, load_before, os.getloadavg())


# ------------------------------------------------------------------------------- reporting


def reference_of(series: Series, results: Sequence[Series]) -> Series | None:
    for other in results:
        if other.reference and (other.shape, other.store) == (series.shape, series.store):
            return other
    return None


def notes_of(series: Series) -> str:
    if series.na:
        return f"n/a: {series.na}"
    names = {
        "stmts_per_task": "stmts/task",
        "commits_per_task": "commits/task",
        "submit_s": "submit s",
        "submit_stmts": "submit stmts",
        "build_s": "build s",
        "rss_mib": "peak rss MiB",
        "rss_start_mib": "rss at start MiB",
    }
    medians = series.extra_medians()
    return ", ".join(f"{names.get(key, key)} {value:.3g}" for key, value in medians.items())


def table_row(series: Series, results: Sequence[Series]) -> str:
    median = series.median
    reference = reference_of(series, results)
    ref = reference.median if reference else None
    name = f"{series.contender}{' *' if series.reference else ''}"
    if median is None:
        figures = f"{'n/a':>9} {'':>10} {'':>7}"
    else:
        rate = (
            f"{1000 * median / series.hops:7.2f} ms/hop"
            if series.hops
            else f"{series.tasks / median:8.0f} t/s"
        )
        ratio = f"{median / ref:6.2f}x" if ref else f"{'n/a':>7}"
        figures = f"{median:9.3f} {rate:>10} {ratio:>7}"
    return (
        f"{series.shape:<9} {series.store:<10} {name:<46} {series.tasks:>6} {figures}  "
        f"{notes_of(series)}"
    )


def print_tables(results: Sequence[Series], latencies: Sequence[Latency]) -> None:
    header = (
        f"{'shape':<9} {'store':<10} {'contender (* = reference)':<46} {'tasks':>6} "
        f"{'median s':>9} {'rate':>10} {'ratio':>7}  notes"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for series in results:
        print(table_row(series, results))
    if not latencies:
        return
    print(
        "\ndependency-resolution latency: gleitzeit, parent finished -> child published;"
        "\ncelery group, apply_async called -> each message sent (the floor of a fan-out)"
    )
    print(
        f"{'store':<10} {'runs of':<9} {'contender':<13} {'count':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}"
    )
    for latency in latencies:
        data = latency.summary()
        head = f"{latency.store:<10} {latency.shape:<9} {latency.contender:<13} {data['count']:>7}"
        if "p50_ms" not in data:
            print(f"{head} (no dependents)")
            continue
        print(f"{head} {data['p50_ms']:>8.2f} {data['p99_ms']:>8.2f} {data['max_ms']:>8.2f}")


def environment() -> dict[str, str]:
    found = {"python": platform.python_version(), "machine": platform.platform()}
    found["cpus"] = str(os.cpu_count())
    for package in ("gleitzeit", "celery", "kombu", "redis", "sqlalchemy", "psycopg"):
        found[package] = installed_version(package)
    found["celery-dyrygent"] = installed_version("celery-dyrygent")
    return found


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_json(
    path: Path, args: argparse.Namespace, passes: Sequence[StorePass], wall: float
) -> None:
    results = [series for found in passes for series in found.results]
    latencies = [latency for found in passes for latency in found.latencies]
    report = {
        "command": " ".join(sys.argv),
        "config": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key != "postgres_url"
        },
        "environment": environment(),
        "concurrency": CONCURRENCY,
        "wall_seconds": wall,
        "results": [series.summary(reference_of(series, results)) for series in results],
        "latency": [latency.summary() for latency in latencies],
        "load_average": [
            {"before": found.load_before, "after": found.load_after} for found in passes
        ],
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


# ---------------------------------------------------------------------------------- the CLI


def shape_list(text: str) -> list[str]:
    shapes = [shape.strip() for shape in text.split(",") if shape.strip()]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
    return [shape for shape in SHAPES if shape in shapes]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per contender")
    parser.add_argument(
        "--shapes", type=shape_list, default=list(SHAPES), help=f"comma-separated: {SHAPES}"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--postgres-url", help=f"PostgreSQL URL (default ${POSTGRES_ENV})")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random graphs")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    parser.add_argument(
        "--poll", type=float, default=0.05, help="seconds between result checks, for every caller"
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and the SQLite store here")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="metrics on: gleitzeit metrics and the worker's own endpoint, scraped throughout",
    )
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, help="seconds between scrapes (--metrics)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stores = stores_to_run(args)
    began = time.perf_counter()
    passes: list[StorePass] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gz-bench-")))
        else:
            workdir = args.workdir.resolve()
        redis = RedisServer.start(workdir)
        stack.callback(redis.stop)
        # Celery reads these before any configuration, here and (via the env) in the worker.
        os.environ["CELERY_BROKER_URL"] = redis.url
        os.environ["CELERY_RESULT_BACKEND"] = redis.url_for(1)
        print(f"redis-server on port {redis.port}; workdir {workdir}", flush=True)
        passes = [bench_store(store, redis, workdir / store, args) for store in stores]
    wall = time.perf_counter() - began
    print_tables(
        [series for found in passes for series in found.results],
        [latency for found in passes for latency in found.latencies],
    )
    print(f"\nwall time {wall:.0f}s; {args.repeat} repetitions; scale {args.scale}")
    for store, found in zip(stores, passes, strict=True):
        print(f"load average (1, 5, 15 min) {store}: {found.load_before} -> {found.load_after}")
    write_json(args.json, args, passes, wall)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
