"""Schedules fired for real: ticks racing from two processes on one store, and two beat
processes with a worker firing a schedule every two seconds."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gleitzeit import Client, RunState, Settings, Workflow
from gleitzeit.store import Store
from tests.cluster import DEADLINE, Cluster, marked_ledger, started_cluster
from tests.conftest import STORES
from tests.services import REPO_ROOT, CeleryBeat, wait_until

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")
REPETITIONS = 20


def stamped(name: str = "scheduled") -> Workflow:
    wf = Workflow(name)
    wf.task("stamp", "tests.value", params={"value": "${inputs.scheduled_at}"})
    return wf


# -- two ticks at once ---------------------------------------------------------------------


def _ticker(settings: Settings, gate: Barrier, jobs: Any, out: Any) -> None:
    """Tick at each fixed time ``jobs`` gives, together with the other ticker."""
    client = Client(settings=settings)
    client.store.now()  # connected before the race starts
    while (now := jobs.get(timeout=120)) is not None:
        gate.wait(timeout=60)
        try:
            ticked = client.fire_schedules(now=now)
            out.put((ticked.fired, ticked.lost, None))
        except Exception as exc:
            out.put(([], 0, repr(exc)))


@pytest.fixture
def tickers(store: Store, database_url: str, broker_url: str) -> Iterator[tuple[Any, Any]]:
    """Two processes that tick on the same store when told to, at the same moment."""
    settings = Settings(database_url=database_url, broker_url=broker_url)
    spawn = multiprocessing.get_context("spawn")
    gate = spawn.Barrier(2)
    jobs = [spawn.Queue(), spawn.Queue()]
    out = spawn.Queue()
    processes = [spawn.Process(target=_ticker, args=(settings, gate, queue, out)) for queue in jobs]
    for process in processes:
        process.start()

    def tick_both(now: float) -> list[tuple[list[tuple[str, str, str]], int, str | None]]:
        for queue in jobs:
            queue.put(now)
        return [out.get(timeout=120) for _ in processes]

    try:
        yield tick_both, settings
    finally:
        for queue in jobs:
            queue.put(None)
        for process in processes:
            process.join(timeout=60)
            if process.exitcode is None:
                process.kill()
                process.join()
        assert [process.exitcode for process in processes] == [0, 0]


def test_two_ticks_racing_fire_each_slot_once(tickers: tuple[Any, Any]) -> None:
    tick_both, settings = tickers
    client = Client(settings=settings)
    start = datetime(2026, 11, 21, 3, tzinfo=BERLIN)
    now = (start + timedelta(hours=2, minutes=30)).timestamp()
    slots = [(start + timedelta(hours=h)).isoformat() for h in range(3)]
    raced = 0
    for repetition in range(REPETITIONS):
        name = f"race-{secrets.token_hex(3)}-{repetition}"
        client.schedule(
            name, stamped("raced"), cron="0 * * * *", timezone="Europe/Berlin",
            catchup=True, start=start,
        )  # fmt: skip

        results = tick_both(now)

        assert [error for _, _, error in results] == [None, None]
        mine = [[slot for n, slot, _ in fired if n == name] for fired, _, _ in results]
        # one of the two claimed the three slots, in one transaction; the other nothing
        assert sorted(mine, key=len) == [[], slots], (repetition, mine)
        keys = Counter(
            run.key for run in client.runs(name="raced", limit=10_000)
            if run.key and run.key.startswith(f"schedule:{name}:")
        )  # fmt: skip
        assert keys == Counter(f"schedule:{name}:{slot}" for slot in slots)
        # both found the slots due and one lost the claim, unless one came after the other
        raced += sum(lost for _, lost, _ in results)
        client.unschedule(name)
    # the race was run: in some repetitions both ticks found the slots due
    assert raced > 0


# -- beat, for real --------------------------------------------------------------------------


@pytest.fixture(params=STORES)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with started_cluster(request.param, tmp_path) as started:
        started.env["GLEITZEIT_SCHEDULE_INTERVAL"] = "1"
        yield started


def test_two_beats_fire_a_schedule_every_two_seconds_once_per_slot(cluster: Cluster) -> None:
    cluster.start_worker(concurrency=2)
    cluster.start_beat()
    second = CeleryBeat.start_beat(
        broker_url=cluster.broker_url,
        database_url=cluster.database_url,
        log_dir=cluster.tmp,
        env=cluster.env,
    )
    try:
        second.wait_ready(timeout=60)
        client = cluster.client()
        client.schedule(
            "every-2s", stamped(), cron="* * * * * */2", timezone="Europe/Berlin", catchup=True
        )

        def succeeded() -> list[Any]:
            done = [r for r in client.runs(name="scheduled") if r.state is RunState.SUCCEEDED]
            return done if len(done) >= 5 else []

        wait_until(succeeded, timeout=DEADLINE, message="five slots' runs never succeeded")
        client.pause_schedule("every-2s")
        runs = wait_until(
            lambda: [] if any(
                r.state is not RunState.SUCCEEDED for r in client.runs(name="scheduled")
            ) else client.runs(name="scheduled", limit=1000),
            timeout=DEADLINE,
            message="the schedule's runs did not all succeed",
        )  # fmt: skip
    finally:
        second.kill()

    assert cluster.beat is not None
    for beat in (cluster.beat, second):
        assert "Sending due task gleitzeit.schedules" in beat.log_text()
    slots = sorted(datetime.fromisoformat(run.inputs["scheduled_at"]) for run in runs)
    # one run per slot, and no slot between the first and the last left out
    assert len(set(slots)) == len(slots) == len(runs)
    assert all(b - a == timedelta(seconds=2) for a, b in itertools.pairwise(slots))
    for run in runs:
        at = run.inputs["scheduled_at"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0[12]:00", at), at
        assert run.key == f"schedule:every-2s:{at}"
        assert client.get(run.id).results() == {"stamp": at}
        assert [row.publish_count for row in marked_ledger(client.store, run.id)] == [1]
    (stored,) = client.schedules()
    assert stored.paused and stored.last_at == max(slots).isoformat()
    assert stored.last_run_state is RunState.SUCCEEDED


_TICK_AT = """
import sys
from gleitzeit import Client
Client().fire_schedules(now=float(sys.argv[1]))
"""


def test_a_tick_killed_between_its_commit_and_the_publish_loses_no_slot(
    cluster: Cluster,
) -> None:
    cluster.start_worker()
    client = cluster.client()
    start = datetime(2026, 11, 21, 3, tzinfo=BERLIN)
    client.schedule("crashed", stamped(), cron="0 * * * *", timezone="Europe/Berlin", start=start)
    now = (start + timedelta(minutes=30)).timestamp()
    env = {
        **cluster.env,
        "GLEITZEIT_DATABASE_URL": cluster.database_url,
        "CELERY_BROKER_URL": cluster.broker_url,
        "GLEITZEIT_CRASH_AT": "after_claim_commit",
        "PYTHONPATH": str(REPO_ROOT),
    }

    killed = subprocess.run(
        [sys.executable, "-c", _TICK_AT, str(now)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run,) = client.runs(name="scheduled")
    assert run.key == f"schedule:crashed:{start.isoformat()}"
    assert [row.published_at for row in client.store.get_dispatches(run.id)] == [None]
    # the slot is claimed: ticking again fires nothing
    assert client.fire_schedules(now=now).fired == []
    # the reconciler publishes what the dead tick claimed, as any claim left unpublished
    wait_until(
        lambda: client.reconcile() and client.get(run.id).status == "succeeded",
        timeout=DEADLINE,
        message="the slot's run never ran",
    )
    assert client.get(run.id).results() == {"stamp": start.isoformat()}
    assert [row.publish_count for row in marked_ledger(client.store, run.id)] == [1]
    assert [r.id for r in client.runs(name="scheduled")] == [run.id]
