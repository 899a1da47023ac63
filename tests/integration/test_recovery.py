"""Every run ends after real faults: killed workers, lost messages, a lost database.

Each test starts its own redis-server, store, Celery workers and beat, with recovery
timeouts shortened (``FAST``) so that the suite stays within minutes. Each asserts that
the run ends as expected within a deadline after the fault is removed, that every task's
outcome is recorded once, that no attempt is published twice, and that tasks that had
finished are not run again. Set ``GLEITZEIT_RECOVERY_TIMES`` to a file to have each test
append the seconds from the removal of its fault to the end of the run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gleitzeit import Client, RunState, TaskState, Workflow
from gleitzeit.client import Run
from tests import tasks
from tests.cluster import DEADLINE, Cluster, started_cluster
from tests.conftest import STORES
from tests.services import (
    CeleryWorker,
    TcpProxy,
    free_port,
    wait_until,
)
from tests.tasks import count_marks

pytestmark = pytest.mark.integration


@pytest.fixture(params=STORES)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with started_cluster(request.param, tmp_path) as started:
        yield started


@pytest.fixture
def postgres_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with started_cluster("postgresql", tmp_path) as started:
        yield started


def report(name: str, seconds: float) -> None:
    path = os.environ.get("GLEITZEIT_RECOVERY_TIMES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"fault": name, "seconds": round(seconds, 2)}) + "\n")


def wait_for_end(run: Run, fault_removed: float, name: str) -> RunState:
    """Wait until the run ends; report the time from the fault's removal to its end."""
    record = wait_until(
        lambda: run.record if run.record.state.value in ("succeeded", "failed") else None,
        timeout=DEADLINE,
        interval=0.1,
        message=f"run {run.id} did not end within {DEADLINE} s of the fault's removal",
    )
    if name:
        report(name, time.monotonic() - fault_removed)
    return record.state


def assert_recorded_once(run: Run) -> None:
    """Each task's outcome recorded once; no attempt in the ledger published twice."""
    events = run.history()
    outcomes = Counter(
        event.task_id for event in events if event.type in ("task_succeeded", "task_failed")
    )
    assert outcomes and max(outcomes.values()) == 1, outcomes
    ledger = run.client.store.get_dispatches(run.id)
    assert all(row.publish_count <= 1 for row in ledger), [
        (row.task_id, row.attempt, row.publish_count) for row in ledger if row.publish_count > 1
    ]


def chain_of_slow(name: str, marks: str, *, length: int, seconds: float) -> Workflow:
    wf = Workflow(name)
    previous: Any = None
    for i in range(length):
        params: dict[str, Any] = {"seconds": seconds, "marks": marks, "name": f"t{i}"}
        if previous is not None:
            params["after"] = previous.result
        previous = wf.task(f"t{i}", tasks.slow, params=params)
    return wf


def started(marks: str, name: str) -> bool:
    return count_marks(marks, f"started-{name}") >= 1


def chain_running(
    cluster: Cluster, marks: str, name: str, seconds: float
) -> tuple[CeleryWorker, Run]:
    """A worker and beat, and a 3-task chain of ``seconds`` each, once its middle task runs."""
    worker = cluster.start_worker()
    cluster.start_beat()
    run = cluster.client().submit(chain_of_slow(name, marks, length=3, seconds=seconds))
    wait_until(lambda: started(marks, "t1"), timeout=60, message="t1 never started")
    return worker, run


# -- killed workers ------------------------------------------------------------------------


def test_sigkill_of_a_pool_process_mid_task(cluster: Cluster, marks: str) -> None:
    _, run = chain_running(cluster, marks, "pool-kill", 1.0)
    holder = run.client.store.holder(run.id, "t1", 1)
    assert holder is not None and holder.pid is not None

    os.kill(holder.pid, signal.SIGKILL)
    state = wait_for_end(run, time.monotonic(), "SIGKILL of a pool process mid-task")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    t1 = run.tasks["t1"]
    assert t1.attempt == 2 and t1.attempts[0].error_type == "gleitzeit.WorkerLost"
    assert (count_marks(marks, "started-t1"), count_marks(marks, "t1")) == (2, 1)
    assert count_marks(marks, "t0") == 1 and count_marks(marks, "t2") == 1


def test_a_task_running_longer_than_its_lease_keeps_it_by_heartbeat(
    cluster: Cluster, marks: str
) -> None:
    cluster.env["GLEITZEIT_LEASE_SECONDS"] = "1.5"
    cluster.start_worker()
    cluster.start_beat()
    wf = Workflow("long")
    wf.task("long", tasks.slow, params={"seconds": 6.0, "marks": marks, "name": "long"})
    run = cluster.client().submit(wf)

    assert run.wait(timeout=DEADLINE) == {"long": "long"}
    assert run.tasks["long"].attempt == 1  # the reconciler never presumed it lost
    assert count_marks(marks, "started-long") == 1


@pytest.mark.parametrize(
    ("fault", "sig"),
    [
        # the main process only: its pool is orphaned and finishes what it holds
        ("SIGKILL of the worker's main process mid-task", signal.SIGKILL),
        ("cold shutdown mid-task, then a new worker", signal.SIGQUIT),
    ],
    ids=["main-process-sigkill", "cold-shutdown"],
)
def test_the_worker_stops_mid_task_and_a_new_worker_goes_on(
    cluster: Cluster, marks: str, fault: str, sig: int
) -> None:
    first, run = chain_running(cluster, marks, "stopped", 2.0)

    first.signal(sig)
    wait_until(lambda: not first.is_running(), timeout=60, message="the worker does not stop")
    cluster.start_worker()
    state = wait_for_end(run, time.monotonic(), fault)

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert [count_marks(marks, f"t{i}") for i in range(3)] == [1, 1, 1]


def test_warm_shutdown_finishes_the_running_task_and_a_new_worker_goes_on(
    cluster: Cluster, marks: str
) -> None:
    first, run = chain_running(cluster, marks, "warm", 1.0)

    first.signal(signal.SIGTERM)
    wait_until(lambda: not first.is_running(), timeout=60, message="warm shutdown hangs")
    assert run.tasks["t1"].state is TaskState.SUCCEEDED  # finished before the worker left
    cluster.start_worker()
    state = wait_for_end(run, time.monotonic(), "warm shutdown, then a new worker")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert all(count_marks(marks, f"started-t{i}") == 1 for i in range(3))


def test_a_poison_task_fails_after_bounded_losses_and_the_run_ends(
    cluster: Cluster, marks: str
) -> None:
    cluster.start_worker()
    cluster.start_beat()
    wf = Workflow("poison")
    killer = wf.task("killer", tasks.poison, params={"marks": marks})
    wf.task("after", tasks.value, params={"value": killer.result})
    wf.task("independent", tasks.value, params={"value": 1, "marks": marks, "name": "ind"})
    run = cluster.client().submit(wf)

    state = wait_for_end(run, time.monotonic(), "a poison task killing its worker every time")

    assert state is RunState.FAILED
    assert_recorded_once(run)
    states = {task_id: task.state for task_id, task in run.tasks.items()}
    assert states == {
        "killer": TaskState.FAILED,
        "after": TaskState.BLOCKED,
        "independent": TaskState.SUCCEEDED,
    }
    assert "lost 3 times" in (run.tasks["killer"].error or "")
    assert count_marks(marks, "poison") == 3


def test_a_stalled_run_runs_its_compensations_and_ends_failed(cluster: Cluster, marks: str) -> None:
    cluster.env["GLEITZEIT_STALL_TIMEOUT"] = "5"
    cluster.start_worker()
    cluster.start_beat()
    wf = Workflow("stalled-saga")
    book = wf.task(
        "book", "tests.step", params={"step": 1, "marks": marks}, compensate="tests.undo"
    )
    # no worker consumes this queue: nothing of the run moves after book
    wf.task("ship", "tests.value", params={"value": book.result}, queue="nowhere")
    run = cluster.client().submit(wf)

    state = wait_for_end(run, time.monotonic(), "")

    assert state is RunState.FAILED
    assert (run.record.error or "").startswith("stalled")
    found = run.tasks
    assert {task_id: task.state for task_id, task in found.items()} == {
        "book": TaskState.SUCCEEDED,
        "ship": TaskState.FAILED,
        "book:compensate": TaskState.SUCCEEDED,
    }
    assert found["book:compensate"].result == {
        "undid": {"step": 1, "booked": "booking-1"},
        "step": 1,
    }
    assert (count_marks(marks, "step-1"), count_marks(marks, "undo-1")) == (1, 1)
    assert_recorded_once(run)


# -- crashes between the store and the broker ---------------------------------------------


@pytest.mark.parametrize("crash_at", ["after_claim_commit", "after_publish"])
def test_a_crash_between_commit_and_publish(cluster: Cluster, marks: str, crash_at: str) -> None:
    crashing = cluster.start_worker(GLEITZEIT_CRASH_AT=crash_at)
    run = cluster.client().submit(chain_of_slow(crash_at, marks, length=3, seconds=0.1))
    wait_until(
        lambda: "signal 9" in crashing.log_text() or run.status == "succeeded",
        timeout=60,
        message="the crash point never fired",
    )
    crashing.kill()
    cluster.start_worker()
    cluster.start_beat()
    state = wait_for_end(run, time.monotonic(), f"crash {crash_at.replace('_', ' ')}")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert all(count_marks(marks, f"t{i}") == 1 for i in range(3))


# -- the broker loses its messages ---------------------------------------------------------


def test_redis_shutdown_nosave_during_dispatch(cluster: Cluster, marks: str) -> None:
    cluster.start_worker(concurrency=2)
    cluster.start_beat()
    wf = Workflow("redis-lost")
    roots = [
        wf.task(f"r{i}", tasks.slow, params={"seconds": 0.3, "marks": marks, "name": f"r{i}"})
        for i in range(10)
    ]
    for i in range(10):
        wf.task(
            f"c{i}",
            tasks.slow,
            params={
                "seconds": 0.1,
                "marks": marks,
                "name": f"c{i}",
                "after": [roots[i].result, roots[(i + 1) % 10].result],
            },
        )
    run = cluster.client().submit(wf)
    wait_until(lambda: count_marks(marks, "r1") >= 1, timeout=60, message="no root finished")

    cluster.redis.shutdown_nosave()  # every queued message is gone with it
    time.sleep(10)  # the outage itself: the broker stays down for 10 s
    cluster.redis.restart()
    state = wait_for_end(run, time.monotonic(), "redis shutdown nosave, restarted 10 s later")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert all(count_marks(marks, name) == 1 for name in run.tasks)


# -- the database goes away ----------------------------------------------------------------


def test_the_database_unreachable_for_a_while(cluster: Cluster, marks: str) -> None:
    # a lease longer than the outage: running tasks are not presumed lost meanwhile
    cluster.env["GLEITZEIT_LEASE_SECONDS"] = "30"
    if cluster.database_url.startswith("sqlite"):
        outage = hold_sqlite_writer(cluster.database_url)
    else:
        outage = cut_postgres(cluster)
    cluster.start_worker()
    cluster.start_beat()
    run = cluster.client().submit(chain_of_slow("db-outage", marks, length=6, seconds=0.3))
    wait_until(lambda: started(marks, "t1"), timeout=60, message="t1 never started")

    with outage:
        time.sleep(5)  # the outage itself
    state = wait_for_end(run, time.monotonic(), f"database unreachable 5 s ({outage.what})")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert all(count_marks(marks, f"t{i}") == 1 for i in range(6))


def test_a_held_row_and_table_lock(postgres_cluster: Cluster, marks: str) -> None:
    # row locks are PostgreSQL's; SQLite's writer lock is in the test above
    cluster = postgres_cluster
    cluster.start_worker()
    cluster.start_beat()
    run = cluster.client().submit(chain_of_slow("row-lock", marks, length=6, seconds=0.3))
    wait_until(lambda: started(marks, "t1"), timeout=60, message="t1 never started")

    url = cluster.database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1 FROM gz_runs WHERE id = %s FOR UPDATE", (run.id,))
        conn.execute("LOCK TABLE gz_dispatches IN EXCLUSIVE MODE")
        time.sleep(5)  # the lock is held this long
    state = wait_for_end(run, time.monotonic(), "row and table lock held 5 s (PostgreSQL)")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert all(count_marks(marks, f"t{i}") == 1 for i in range(6))


class Outage:
    """A database outage the test starts and ends as a ``with`` block."""

    def __init__(self, what: str, begin: Any, end: Any) -> None:
        self.what = what
        self._begin = begin
        self._end = end

    def __enter__(self) -> Outage:
        self._begin()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()


def hold_sqlite_writer(url: str) -> Outage:
    path = url.removeprefix("sqlite:///")
    holder: dict[str, sqlite3.Connection] = {}

    def begin() -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        holder["conn"] = conn

    def end() -> None:
        conn = holder.pop("conn")
        conn.execute("ROLLBACK")
        conn.close()

    return Outage("SQLite held by another writer", begin, end)


def cut_postgres(cluster: Cluster) -> Outage:
    proxy = TcpProxy(("127.0.0.1", 5432))
    cluster.database_url = proxy.url_for(cluster.database_url)
    return Outage("PostgreSQL behind a cut TCP proxy", proxy.cut, proxy.restore)


# -- reconcilers at once, and everything restarted -----------------------------------------


def test_two_reconcilers_at_once_for_100_rounds_during_runs(cluster: Cluster, marks: str) -> None:
    cluster.env["GLEITZEIT_REPUBLISH_AFTER"] = "1"
    cluster.start_worker(concurrency=2)
    client = cluster.client()
    # an app whose broker is down when it submits: its runs wait in the ledger
    offline = Client(
        settings=replace(cluster.settings(), broker_url=f"redis://127.0.0.1:{free_port()}/0")
    )
    submitted = []
    for i in range(4):
        wf = Workflow(f"busy-{i}")
        previous = wf.task(
            "t0", tasks.value, params={"value": 0, "marks": marks, "name": f"{i}-t0"}
        )
        for j in range(1, 10):
            previous = wf.task(
                f"t{j}",
                tasks.add,
                params={"a": previous.result, "b": 1, "marks": marks, "name": f"{i}-t{j}"},
            )
        submitted.append((offline if i % 2 else client).submit(wf))

    rounds: list[int] = []

    def reconcile() -> None:
        own = cluster.client()
        for _ in range(100):
            own.reconcile()
            rounds.append(1)
            time.sleep(0.05)  # rounds spread over seconds, so they meet runs in every phase

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(rounds) == 200

    rounds_done = time.monotonic()
    for run in submitted:
        assert wait_for_end(run, rounds_done, "") is RunState.SUCCEEDED
        assert_recorded_once(run)
        assert run.results()["t9"] == 9
    report("two reconcilers at once, 100 rounds each", time.monotonic() - begun)
    names = [f"{i}-t{j}" for i in range(4) for j in range(10)]
    assert all(count_marks(marks, name) == 1 for name in names)


def test_a_200_task_run_killed_half_way_and_restarted(cluster: Cluster, marks: str) -> None:
    cluster.start_worker(concurrency=2)
    cluster.start_beat()
    wf = Workflow("restart-200")
    layer: list[Any] = []
    for level in range(10):
        layer = [
            wf.task(
                f"l{level}-{i}",
                tasks.slow,
                params={
                    "seconds": 0.02,
                    "marks": marks,
                    "name": f"l{level}-{i}",
                    "after": [p.result for p in layer[i : i + 2]],
                },
            )
            for i in range(20)
        ]
    run = cluster.client().submit(wf)
    wait_until(
        lambda: sum(t.state is TaskState.SUCCEEDED for t in run.tasks.values()) >= 100,
        timeout=120,
        message="the run never got half way",
    )

    cluster.kill_everything()
    finished_before = {
        task_id for task_id, task in run.tasks.items() if task.state is TaskState.SUCCEEDED
    }
    cluster.redis.restart()
    cluster.start_worker(concurrency=2)
    cluster.start_beat()
    state = wait_for_end(run, time.monotonic(), "200-task run: everything killed half way")

    assert state is RunState.SUCCEEDED
    assert_recorded_once(run)
    assert all(count_marks(marks, task_id) == 1 for task_id in finished_before)
