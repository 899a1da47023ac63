"""When tasks fail, and run control, on real Celery workers, redis-server and both stores.

Skip, alternatives, sagas, workflow retries, cancel, pause and resume. Side
effects are mark files (``tests.tasks``), so counts prove what ran and how often.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from gleitzeit import (
    Client,
    GraphChanged,
    RunControlError,
    RunState,
    TaskState,
    Workflow,
    WorkflowFailed,
)
from tests.cluster import DEADLINE, marked_ledger, started_cluster
from tests.conftest import STORES
from tests.services import wait_until
from tests.tasks import count_marks

pytestmark = pytest.mark.integration


def test_a_skipped_failure_lets_its_dependents_run_with_none(client: Client, marks: str) -> None:
    wf = Workflow("skip")
    wf.task("enrich", "tests.fail", params={"message": "no enrichment today"}, on_failure="skip")
    wf.task(
        "report",
        "tests.describe",
        params={"extra": "${enrich.result}", "first": "${enrich.result.rows.0}"},
    )
    wf.task("other", "tests.value", params={"value": 1, "marks": marks})

    run = client.submit(wf)
    results = run.wait(timeout=60)

    assert results["report"]["params"] == {"extra": None, "first": None}
    assert run.status == "succeeded"
    enrich = run.tasks["enrich"]
    assert enrich.state is TaskState.SKIPPED
    assert enrich.error is not None and "no enrichment today" in enrich.error


def test_an_alternative_stands_in_for_a_failed_task(client: Client, marks: str) -> None:
    wf = Workflow("alternative")
    wf.task(
        "live",
        "tests.fail",
        params={"message": "the live feed is down", "marks": marks, "name": "live"},
        on_failure="alternative:cached",
    )
    wf.task("cached", "tests.value", params={"value": [3, 4, 5], "marks": marks, "name": "cached"})
    wf.task("sum", "tests.total", params={"values": "${live.result}"})

    run = client.submit(wf)
    results = run.wait(timeout=60)

    assert results["sum"] == 12  # read through live's id
    assert {k: t.state for k, t in run.tasks.items()} == {
        "live": TaskState.SKIPPED,
        "cached": TaskState.SUCCEEDED,
        "sum": TaskState.SUCCEEDED,
    }
    assert (count_marks(marks, "live"), count_marks(marks, "cached")) == (1, 1)
    replaced = [e for e in run.history() if e.type == "task_replaced"]
    assert [e.task_id for e in replaced] == ["live"]


def test_a_saga_failing_at_its_fourth_step_undoes_the_three_before_in_reverse(
    client: Client, marks: str
) -> None:
    wf = Workflow("saga")
    previous = None
    for i in range(1, 6):
        params = {"step": i, "marks": marks, "fail_at": 4}
        if previous:
            params["after"] = f"${{{previous}.result.booked}}"
        wf.task(f"book{i}", "tests.step", params=params, compensate="tests.undo")
        previous = f"book{i}"

    run = client.submit(wf)
    with pytest.raises(WorkflowFailed):
        run.wait(timeout=60)

    undone = sorted(Path(marks).glob("undone-at.*"), key=lambda p: int(p.name.split(".")[1]))
    assert [p.name.split(".")[2] for p in undone] == ["3", "2", "1"]
    assert [count_marks(marks, f"step-{i}") for i in range(1, 6)] == [1, 1, 1, 1, 0]
    found = run.tasks
    assert found["book3:compensate"].result == {
        "undid": {"step": 3, "booked": "booking-3"},
        "step": 3,
    }
    assert found["book4"].state is TaskState.FAILED and found["book5"].state is TaskState.BLOCKED
    assert run.status == "failed"
    assert "run_compensating" in [e.type for e in run.history()]


def divide_workflow(marks: str, *, plus: int = 1) -> Workflow:
    wf = Workflow("divide")
    total = wf.task("total", "tests.value", params={"value": 10, "marks": marks, "name": "total"})
    share = wf.task(
        "share",
        "tests.divide",
        params={"a": total.result, "b": "${inputs.parts}", "marks": marks, "name": "share"},
    )
    wf.task(
        "plus", "tests.add", params={"a": share.result, "b": plus, "marks": marks, "name": "plus"}
    )
    wf.task("audit", "tests.value", params={"value": "ok", "marks": marks, "name": "audit"})
    return wf


def counts(marks: str) -> dict[str, int]:
    return {name: count_marks(marks, name) for name in ("total", "share", "plus", "audit")}


def test_retry_from_failure_after_fixing_an_input_reruns_only_the_failed_part(
    client: Client, marks: str
) -> None:
    run = client.submit(divide_workflow(marks), {"parts": 0})
    with pytest.raises(WorkflowFailed, match="ZeroDivisionError"):
        run.wait(timeout=60)
    assert counts(marks) == {"total": 1, "share": 1, "plus": 0, "audit": 1}
    assert run.tasks["plus"].state is TaskState.BLOCKED

    client.retry(run.id, "from_failure", inputs={"parts": 2})
    results = run.wait(timeout=60)

    assert results["plus"] == 6.0
    assert counts(marks) == {"total": 1, "share": 2, "plus": 1, "audit": 1}
    assert run.tasks["share"].attempt == 2
    retried = next(e for e in run.history() if e.type == "run_retried")
    assert retried.data["rerun"] == ["plus", "share"] and "@" in retried.data["by"]


def test_retry_against_a_changed_definition_is_refused_unless_forced(
    client: Client, marks: str
) -> None:
    run = client.submit(divide_workflow(marks), {"parts": 0})
    with pytest.raises(WorkflowFailed):
        run.wait(timeout=60)
    events = len(run.history())

    with pytest.raises(GraphChanged, match=r"tasks changed: \['plus'\]"):
        client.retry(run.id, inputs={"parts": 5}, workflow=divide_workflow(marks, plus=100))
    assert run.status == "failed" and len(run.history()) == events  # nothing changed

    client.retry(run.id, inputs={"parts": 5}, workflow=divide_workflow(marks, plus=100), force=True)

    assert run.wait(timeout=60)["plus"] == 102.0
    assert counts(marks) == {"total": 1, "share": 2, "plus": 1, "audit": 1}


def test_retry_of_a_run_still_running_is_refused(client: Client, marks: str) -> None:
    wf = Workflow("long")
    wf.task("wait", "tests.slow", params={"seconds": 2, "marks": marks, "name": "wait"})
    run = client.submit(wf)

    with pytest.raises(RunControlError, match="is still running"):
        client.retry(run.id, "from_start")

    run.wait(timeout=60)
    assert count_marks(marks, "wait") == 1


def test_cancel_during_a_100_task_run_starts_nothing_after_it(client: Client, marks: str) -> None:
    wf = Workflow("hundred")
    for i in range(100):
        wf.task(f"t{i}", "tests.slow", params={"seconds": 0.5, "marks": marks, "name": f"t{i}"})
    run = client.submit(wf)
    wait_until(lambda: count_marks(marks, "t*") >= 8, timeout=60, message="8 tasks to finish")

    assert client.cancel(run.id)

    cancelled_at = next(e.created_at for e in run.history() if e.type == "run_cancelled")
    assert run.status == "cancelled"
    # the queued messages drain: each is revoked or does no work when it arrives
    broker = redis.Redis.from_url(client.settings.broker_url)
    wait_until(
        lambda: broker.llen("celery") == 0 and broker.hlen("unacked") == 0,
        timeout=60,
        message="the queue to drain",
    )
    tasks = run.tasks
    started = [a.started_at for t in tasks.values() for a in t.attempts]
    assert started and max(started) <= cancelled_at
    assert count_marks(marks, "started-t*") == len(started)
    states = {t.state for t in tasks.values()}
    assert states <= {TaskState.SUCCEEDED, TaskState.CANCELLED}
    assert sum(t.state is TaskState.CANCELLED for t in tasks.values()) >= 50
    assert not client.cancel(run.id)  # idempotent
    with pytest.raises(RunControlError, match="nothing to pause"):
        client.pause(run.id)


@pytest.mark.parametrize("store", STORES)
def test_pause_then_resume_with_a_worker_restart_between(store: str, tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    with started_cluster(store, tmp_path) as cluster:
        worker = cluster.start_worker(concurrency=2)
        cluster.start_beat()  # the reconciler runs all along, and must not dispatch either
        client = cluster.client()
        wf = Workflow("paused")
        firsts = [
            wf.task(f"a{i}", "tests.slow", params={"seconds": 2, "marks": marks, "name": f"a{i}"})
            for i in range(2)
        ]
        for i in range(20):
            wf.task(
                f"b{i}",
                "tests.slow",
                params={"seconds": 0.05, "marks": marks, "name": f"b{i}"},
                depends_on=firsts,
            )
        run = client.submit(wf)
        wait_until(
            lambda: count_marks(marks, "started-a*") == 2, timeout=60, message="a0, a1 to start"
        )

        assert client.pause(run.id)

        # the running tasks finish and are recorded; nothing new is dispatched
        wait_until(lambda: run.tasks["a1"].state is TaskState.SUCCEEDED, timeout=60, message="a1")
        wait_until(lambda: run.tasks["a0"].state is TaskState.SUCCEEDED, timeout=60, message="a0")
        worker.stop()
        cluster.start_worker(concurrency=2)
        client.reconcile()
        assert [d.task_id for d in client.store.get_dispatches(run.id)] == ["a0", "a1"]
        assert run.status == "paused"
        assert count_marks(marks, "b*") == 0

        assert client.resume(run.id)

        assert run.wait(timeout=DEADLINE) is not None
        assert [count_marks(marks, f"b{i}") for i in range(20)] == [1] * 20
        assert [count_marks(marks, f"a{i}") for i in range(2)] == [1, 1]
        ledger = marked_ledger(client.store, run.id)
        assert len(ledger) == 22 and all(d.publish_count == 1 for d in ledger)
        types = [e.type for e in run.history()]
        assert types.index("run_paused") < types.index("run_resumed")
        assert run.record.state is RunState.SUCCEEDED
