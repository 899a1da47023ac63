"""Benchmark: a gleitzeit fan-out/fan-in run against the same no-ops as a plain Celery ``group``.

    /work/venv/bin/python scripts/bench_fanin.py [--tasks 1000] [--repeat 3]
        [--store sqlite|postgresql|both] [--json out.json]

gleitzeit runs ``start -> N parallel no-ops -> join`` (``join`` takes every no-op's result by
reference); plain Celery sends the same N no-ops as a ``group`` and waits with ``.get()`` on a
Redis result backend. Both go through the same worker (``celery -A gleitzeit.worker worker -I
scripts.bench_tasks``, prefork, concurrency 2) and a private redis-server on a free port (db 0
broker, db 1 results). The result backend is set with ``CELERY_RESULT_BACKEND`` in the
environment, which Celery reads before any configuration (gleitzeit's app sets none).

The PostgreSQL store needs ``GLEITZEIT_TEST_POSTGRES_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/test``); a throwaway database is made on that server.
Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from celery import Celery, group  # noqa: E402

from gleitzeit import Client, Workflow  # noqa: E402
from gleitzeit.settings import Settings  # noqa: E402
from gleitzeit.store import Store  # noqa: E402
from gleitzeit.worker import create_app  # noqa: E402
from scripts import bench_tasks  # noqa: E402
from tests.services import CeleryWorker, RedisServer, postgres_database  # noqa: E402

POSTGRES_ENV = "GLEITZEIT_TEST_POSTGRES_URL"
TASKS_MODULE = "scripts.bench_tasks"
CONCURRENCY = 2
GROUP = "celery group"
GLEITZEIT = "gleitzeit"


@dataclass
class Series:
    """The timings of one contender on one store."""

    contender: str
    store: str
    tasks: int
    seconds: list[float] = field(default_factory=list)
    #: gleitzeit only: time spent in ``client.submit`` (plan, insert, publish the root)
    submit_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["median_seconds"] = self.median
        data["tasks_per_second"] = self.tasks / self.median
        if self.submit_seconds:
            data["median_submit_seconds"] = statistics.median(self.submit_seconds)
        return data


# ---------------------------------------------------------------------------- the contenders


def run_group(app: Celery, n: int, timeout: float, poll: float) -> tuple[float, float | None]:
    """N plain no-ops as one ``group``, waited for with ``.get()``; returns (seconds, None)."""
    signature = app.signature(bench_tasks.PLAIN_NOOP)
    canvas = group([signature.clone(args=(i,)) for i in range(n)], app=app)
    started = time.perf_counter()
    result = canvas.apply_async()
    values = result.get(timeout=timeout, interval=poll)
    elapsed = time.perf_counter() - started
    result.forget()
    if values != list(range(n)):
        raise RuntimeError(f"the group returned wrong results: {values[:5]}...")
    return elapsed, None


def fanin_workflow(n: int) -> Workflow:
    """``start -> t0..t{n-1} -> join``, ``join`` referencing every ``ti``'s result."""
    wf = Workflow("bench-fanin")
    start = wf.task("start", bench_tasks.gz_start)
    fan = [
        wf.task(f"t{i}", bench_tasks.gz_noop, params={"i": i}, depends_on=[start]) for i in range(n)
    ]
    wf.task("join", bench_tasks.gz_join, params={"values": [handle.result for handle in fan]})
    return wf


def run_gleitzeit(
    client: Client, n: int, timeout: float, poll: float
) -> tuple[float, float | None]:
    """One fan-out/fan-in run, submitted and waited for; returns (seconds, submit seconds)."""
    workflow = fanin_workflow(n)
    started = time.perf_counter()
    run = client.submit(workflow)
    submitted = time.perf_counter()
    results = run.wait(timeout=timeout, interval=poll)
    elapsed = time.perf_counter() - started
    if results.get("join") != n * (n - 1) // 2:
        raise RuntimeError(f"run {run.id}: join returned {results.get('join')!r}")
    return elapsed, submitted - started


# ------------------------------------------------------------------------------- the stores


@contextlib.contextmanager
def store_url(store: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty store of kind ``store`` (a temp SQLite file or a throwaway database)."""
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'bench-store.db'}"
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        raise SystemExit(f"--store postgresql needs {POSTGRES_ENV}")
    with postgres_database(admin_url) as url:
        yield url


def stores_to_run(choice: str) -> list[str]:
    if choice != "both":
        return [choice]
    if os.environ.get(POSTGRES_ENV):
        return ["sqlite", "postgresql"]
    print(f"note: {POSTGRES_ENV} is not set; benchmarking sqlite only", file=sys.stderr)
    return ["sqlite"]


# ------------------------------------------------------------------------------- the benchmark


def bench_store(
    store: str, redis: RedisServer, workdir: Path, args: argparse.Namespace
) -> list[Series]:
    """Start a worker on ``store``, warm up, then alternate group and gleitzeit runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(store_url(store, workdir))
        settings = Settings(database_url=database_url, broker_url=redis.url)
        Store.open(database_url)  # migrate once here, not racing in the worker's children
        worker = CeleryWorker.start(
            broker_url=redis.url,
            database_url=database_url,
            log_dir=workdir,
            include=(TASKS_MODULE,),
            concurrency=CONCURRENCY,
            env={"CELERY_RESULT_BACKEND": os.environ["CELERY_RESULT_BACKEND"]},
        )
        stack.callback(worker.stop)
        worker.wait_ready(timeout=60)
        print(f"[{store}] worker {worker.name} pid {worker.pid}, log {worker.log_path}", flush=True)
        app = create_app(settings, main="bench-caller")
        stack.callback(app.close)
        client = Client(app=app, settings=settings)
        contenders: list[tuple[Series, Callable[[int], tuple[float, float | None]]]] = [
            (
                Series(GROUP, store, args.tasks),
                lambda n: run_group(app, n, args.timeout, args.poll),
            ),
            (
                Series(GLEITZEIT, store, args.tasks),
                lambda n: run_gleitzeit(client, n, args.timeout, args.poll),
            ),
        ]
        for series, run in contenders:
            seconds, _ = run(args.warmup_tasks)
            print(f"[{store}] warm-up {series.contender}: {seconds:.3f}s", flush=True)
        for repetition in range(1, args.repeat + 1):
            for series, run in contenders:
                seconds, submit = run(args.tasks)
                series.seconds.append(seconds)
                if submit is not None:
                    series.submit_seconds.append(submit)
                extra = "" if submit is None else f" (submit {submit:.3f}s)"
                print(
                    f"[{store}] #{repetition} {series.contender}: {seconds:.3f}s{extra}",
                    flush=True,
                )
        errors = [line for line in worker.log_text().splitlines() if "ERROR" in line]
        if errors:
            print(f"[{store}] worker logged {len(errors)} ERROR lines, e.g. {errors[0]}")
        return [series for series, _ in contenders]


def print_table(results: list[Series]) -> None:
    groups = {series.store: series for series in results if series.contender == GROUP}
    header = f"{'contender':<14} {'store':<11} {'median s':>9} {'tasks/s':>9} {'gz/group':>9}"
    print()
    print(header)
    print("-" * len(header))
    for series in results:
        ratio = series.median / groups[series.store].median
        print(
            f"{series.contender:<14} {series.store:<11} {series.median:>9.3f} "
            f"{series.tasks / series.median:>9.1f} {ratio:>9.2f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="fanned-out no-ops per run")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per contender")
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--warmup-tasks", type=int, help="no-ops in each contender's warm-up run (default --tasks)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.05,
        help=(
            "seconds between result checks, for both: group.get(interval=) and "
            "run.wait(interval=) (both default to 0.5, which adds up to 0.5 s to a run)"
        ),
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and the SQLite store here")
    args = parser.parse_args(argv)
    if args.warmup_tasks is None:
        args.warmup_tasks = args.tasks
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stores = stores_to_run(args.store)
    began = time.perf_counter()
    results: list[Series] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gz-bench-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        redis = RedisServer.start(workdir)
        stack.callback(redis.stop)
        # Read by Celery itself (before any config) in this process and, via the env, the worker.
        os.environ["CELERY_BROKER_URL"] = redis.url
        os.environ["CELERY_RESULT_BACKEND"] = redis.url_for(1)
        print(f"redis-server on port {redis.port}; workdir {workdir}", flush=True)
        for store in stores:
            results.extend(bench_store(store, redis, workdir / store, args))
    wall = time.perf_counter() - began
    print_table(results)
    print(f"\nwall time {wall:.1f}s ({args.repeat} repetitions, {args.tasks} tasks)")
    if args.json:
        report = {
            "tasks": args.tasks,
            "repeat": args.repeat,
            "concurrency": CONCURRENCY,
            "wall_seconds": wall,
            "results": [series.summary() for series in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
