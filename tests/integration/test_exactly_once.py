"""One dispatch per attempt and one outcome per attempt, under real races."""

from __future__ import annotations

import multiprocessing
import random
import uuid
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from gleitzeit import Client, IdempotencyConflict, Settings, TaskState, Workflow
from gleitzeit.dispatch import EXECUTE_TASK
from tests import tasks
from tests.services import CeleryWorker, wait_until
from tests.tasks import count_marks

pytestmark = pytest.mark.integration

WAIT = 180


def ledger_counts(client: Client, run_id: str) -> Counter[tuple[str, int]]:
    return Counter((row.task_id, row.attempt) for row in client.store.get_dispatches(run_id))


@pytest.mark.parametrize("repetition", range(10))
def test_a_50_parent_fan_in_released_at_once_runs_everything_once(
    client: Client, tmp_path: Path, repetition: int
) -> None:
    marks = tmp_path / "marks"
    barrier = tmp_path / "open"
    wf = Workflow("barrier-fan-in")
    parents = [
        wf.task(
            f"p{i}",
            tasks.wait_for,
            params={"barrier": str(barrier), "marks": str(marks), "name": f"p{i}"},
        )
        for i in range(50)
    ]
    wf.task(
        "child",
        tasks.value,
        params={"value": [p.result for p in parents], "marks": str(marks), "name": "child"},
    )

    run = client.submit(wf)
    # every worker process holds a parent at the barrier, so they finish together
    wait_until(
        lambda: len(list(marks.glob("waiting-*"))) >= 4, timeout=WAIT, message="parents not waiting"
    )
    barrier.touch()
    results = run.wait(timeout=WAIT)

    assert results["child"] == [f"p{i}" for i in range(50)]
    assert all(count_marks(str(marks), f"p{i}") == 1 for i in range(50))
    assert count_marks(str(marks), "child") == 1
    assert ledger_counts(client, run.id) == Counter({(t, 1): 1 for t in [*results]})


def test_a_message_delivered_again_while_its_attempt_runs_does_no_work(
    client: Client, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    barrier = tmp_path / "open"
    wf = Workflow("redelivered-while-running")
    wf.task(
        "slow",
        tasks.wait_for,
        params={"barrier": str(barrier), "marks": str(marks), "name": "slow"},
    )
    run = client.submit(wf)
    wait_until(
        lambda: count_marks(str(marks), "waiting-slow") == 1,
        timeout=WAIT,
        message="the task never started",
    )

    message_id = client.store.get_dispatches(run.id)[0].message_id
    client.app.send_task(EXECUTE_TASK, args=(run.id, "slow", 1), task_id=message_id)
    wait_until(
        lambda: any(e.type == "delivery_ignored" for e in run.history()),
        timeout=WAIT,
        message="the second delivery was never seen",
    )
    barrier.touch()

    assert run.wait(timeout=WAIT) == {"slow": "slow"}
    assert count_marks(str(marks), "waiting-slow") == 1
    assert len(run.tasks["slow"].attempts) == 1


def _submit_at_once(
    settings: Settings, key: str, inputs: dict[str, Any], gate: Barrier, out: Any
) -> None:
    wf = Workflow("keyed-race")
    wf.task("only", "tests.value", params={"value": "${inputs.n}"})
    client = Client(settings=settings)
    gate.wait(timeout=60)
    try:
        out.put(client.submit(wf, inputs=inputs, key=key).id)
    except IdempotencyConflict as exc:
        out.put(f"conflict: {exc}")


def _race(settings: Settings, key: str, inputs: dict[str, Any], processes: int) -> list[str]:
    spawn = multiprocessing.get_context("spawn")
    gate = spawn.Barrier(processes)
    out = spawn.Queue()
    workers = [
        spawn.Process(target=_submit_at_once, args=(settings, key, inputs, gate, out))
        for _ in range(processes)
    ]
    for process in workers:
        process.start()
    found = [out.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    return found


def test_twenty_processes_submitting_one_key_make_one_run(client: Client) -> None:
    key = f"race/{uuid.uuid4()}"

    ids = _race(client.settings, key, {"n": 1}, processes=20)

    assert len(set(ids)) == 1 and not ids[0].startswith("conflict")
    assert [r.id for r in client.runs(name="keyed-race", limit=10_000) if r.key == key] == ids[:1]
    assert client.get(ids[0]).wait(timeout=WAIT) == {"only": 1}
    assert len(client.store.get_dispatches(ids[0])) == 1

    other = _race(client.settings, key, {"n": 2}, processes=4)
    assert all(o.startswith("conflict") and "inputs" in o for o in other)


def random_dag(size: int, marks: str, *, seed: int = 5000) -> Workflow:
    rng = random.Random(seed)
    wf = Workflow(f"random-{size}")
    for i in range(size):
        parents = sorted({f"n{rng.randrange(i)}" for _ in range(2)}) if i >= 10 else []
        wf.task(f"n{i}", tasks.noop, params={"marks": marks, "name": f"n{i}"}, depends_on=parents)
    return wf


def test_a_5000_task_random_dag_dispatches_and_runs_each_task_once(
    client: Client, marks: str
) -> None:
    run = client.submit(random_dag(5000, marks))
    run.wait(timeout=600)

    ran = Counter(path.name.split(".")[0] for path in Path(marks).iterdir())
    assert len(ran) == 5000 and set(ran.values()) == {1}
    ledger = ledger_counts(client, run.id)
    assert len(ledger) == 5000 and set(ledger.values()) == {1}
    assert {t.state for t in run.tasks.values()} == {TaskState.SUCCEEDED}


def test_crash_points_stop_a_worker_between_claim_and_publish(
    client: Client, broker_url: str, database_url: str, tmp_path: Path, marks: str
) -> None:
    crashing = CeleryWorker.start(
        broker_url=broker_url,
        database_url=database_url,
        log_dir=tmp_path,
        concurrency=1,
        queues=["crashing"],
        env={"GLEITZEIT_CRASH_AT": "after_claim_commit"},
    )
    try:
        crashing.wait_ready(timeout=60)
        wf = Workflow("crash-after-claim")
        first = wf.task("first", tasks.value, params={"value": 1, "marks": marks}, queue="crashing")
        wf.task("second", tasks.value, params={"value": first.result}, queue="crashing")
        run = client.submit(wf)

        wait_until(
            lambda: run.tasks["second"].state is TaskState.QUEUED,
            timeout=WAIT,
            message="the second task was never claimed",
        )
        wait_until(
            lambda: "signal 9" in crashing.log_text(),
            timeout=WAIT,
            message="the pool process did not die at the crash point",
        )
    finally:
        crashing.stop()

    ledger = {row.task_id: row for row in client.store.get_dispatches(run.id)}
    assert ledger["first"].publish_count == 1
    assert ledger["second"].published_at is None  # claimed and committed, never published
    assert run.tasks["first"].state is TaskState.SUCCEEDED
    assert count_marks(marks, "value") == 1
