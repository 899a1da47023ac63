"""The store alone: a worker's store work per task, by store and number of processes.

Each process takes its share of a run's independent tasks and does for each what a worker
does around a task's body: ``start_attempt`` then ``record_success`` (two transactions; on
PostgreSQL a third, ``confirm_success``, waits for the success on disk).
No Celery, no broker: what one task costs the store, and how that changes when several
processes write at once. Prints, per store and process count, the wall time per task and
the CPU time per task summed over the processes (median of ``--repeat`` runs, each on a
new run in the same store).

    python scripts/bench_store.py --processes 1,2,4 --postgres-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection

from bench import delete_runs, gz_wide_workflow  # puts the repository on sys.path

from gleitzeit.client import plan_run
from gleitzeit.store import Dispatch, Store
from gleitzeit.store.records import Holder


def run_share(url: str, share: list[Dispatch], ready: Connection, go: Connection) -> None:
    """One process's share of the run's tasks; sends back its CPU seconds."""
    store = Store.open(url, migrate=False)
    holder = Holder("bench", os.getpid())
    store.get_run(share[0].run_id)  # connect before the clock starts
    ready.send(True)
    go.recv()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for d in share:
        store.start_attempt(d.run_id, d.task_id, d.attempt, worker="bench", holder=holder)
        if not store.record_success(d.run_id, d.task_id, d.attempt, "1").durable:
            store.confirm_success(d.run_id, d.task_id, d.attempt, "1")
    after = resource.getrusage(resource.RUSAGE_SELF)
    ready.send(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def measure(url: str, tasks: int, processes: int) -> tuple[float, float]:
    """Seconds of wall time and of CPU time (all processes) per task, for one run."""
    store = Store.open(url)
    dispatches = store.create_run(plan_run(gz_wide_workflow(tasks), {})).dispatches
    try:
        return _timed(store, url, dispatches, processes)
    finally:
        if store.engine.dialect.name == "postgresql":
            delete_runs(store, [dispatches[0].run_id])  # the server is shared: leave no rows


def _timed(
    store: Store, url: str, dispatches: list[Dispatch], processes: int
) -> tuple[float, float]:
    fork = multiprocessing.get_context("fork")
    pipes = [fork.Pipe() for _ in range(processes)]
    starts = [fork.Pipe() for _ in range(processes)]
    workers = [
        fork.Process(
            target=run_share, args=(url, dispatches[k::processes], pipes[k][1], starts[k][1])
        )
        for k in range(processes)
    ]
    store.engine.dispose()  # no connection crosses the fork
    for worker in workers:
        worker.start()
    for ours, _ in pipes:
        ours.recv()
    began = time.perf_counter()
    for ours, _ in starts:
        ours.send(True)
    cpu = sum(ours.recv() for ours, _ in pipes)
    wall = time.perf_counter() - began
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"a benchmark process exited with {worker.exitcode}")
    if store.get_run(dispatches[0].run_id).state.value != "succeeded":
        raise RuntimeError("the run did not end succeeded")
    return wall / len(dispatches), cpu / len(dispatches)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres-url", default=os.environ.get("GLEITZEIT_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    with tempfile.TemporaryDirectory(prefix="gz-bench-store-") as workdir:
        urls = {"sqlite": f"sqlite:///{workdir}/store.db"}
        if args.postgres_url:
            urls["postgresql"] = args.postgres_url
        print(f"{args.tasks} tasks per run, median of {args.repeat}; per task: wall / CPU (us)")
        for name, url in urls.items():
            for processes in counts:
                runs = [measure(url, args.tasks, processes) for _ in range(args.repeat)]
                wall = statistics.median(r[0] for r in runs) * 1e6
                cpu = statistics.median(r[1] for r in runs) * 1e6
                print(
                    f"{name:10} {processes} processes  wall {wall:7.0f}  CPU {cpu:7.0f}", flush=True
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
