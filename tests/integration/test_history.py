"""Repairs are in a run's history: ``gleitzeit history`` after real faults, as a user runs it.

Each test starts its own redis-server, store, Celery worker and beat (``tests.cluster``),
and reads the history with the console script in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gleitzeit import RunState, Workflow
from tests.cluster import DEADLINE, Cluster, started_cluster
from tests.conftest import STORES
from tests.services import REPO_ROOT, wait_until
from tests.tasks import count_marks
from tests.test_cli import GLEITZEIT

pytestmark = pytest.mark.integration


@pytest.fixture(params=STORES)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with started_cluster(request.param, tmp_path) as started:
        yield started


def cli(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script against the cluster's store and broker (``env`` overrides)."""
    given = {
        **os.environ,
        **cluster.env,
        "PYTHONPATH": str(REPO_ROOT),
        "GLEITZEIT_DATABASE_URL": cluster.database_url,
        "CELERY_BROKER_URL": cluster.broker_url,
        **env,
    }
    done = subprocess.run(
        [GLEITZEIT, *args],
        cwd=REPO_ROOT,
        env=given,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def ended(cluster: Cluster, run_id: str) -> RunState:
    run = cluster.client().get(run_id)

    def final() -> RunState | None:
        state = run.progress.state
        return None if state is RunState.RUNNING else state

    return wait_until(
        final,
        timeout=DEADLINE,
        interval=0.1,
        message=f"run {run_id} did not end",
    )


def lines_of(history: str, task: str) -> list[str]:
    """The history's lines about ``task`` (``first#1``), each from its event's name on."""
    return [line.split(" ", 1)[1] for line in history.splitlines() if f" {task}" in line]


def test_a_run_submitted_with_the_broker_down_shows_its_republish(
    cluster: Cluster, tmp_path: Path
) -> None:
    flow = tmp_path / "pair.yaml"
    flow.write_text(
        "name: pair\n"
        "tasks:\n"
        "  - {id: first, task: tests.value, params: {value: 1}}\n"
        "  - {id: second, task: tests.add, params: {a: '${first.result}', b: 1}}\n"
    )
    cluster.redis.stop()  # the broker is down when the run is submitted
    run_id = cli(cluster, "submit", str(flow), "-I", "tests.tasks").stdout.strip()
    (row,) = cluster.client().store.get_dispatches(run_id)
    assert row.published_at is None  # it waits in the ledger

    cluster.redis.restart()
    cluster.start_worker()
    cluster.start_beat()

    assert ended(cluster, run_id) is RunState.SUCCEEDED
    history = cli(cluster, "history", run_id).stdout

    first = lines_of(history, "first#1")
    assert [line.split()[0] for line in first] == [
        "task_queued",
        "task_republished",
        "task_started",
        "task_succeeded",
    ], history
    assert "by the reconciler" in first[1] and "left unpublished for" in first[1]
    kinds = [line.split()[1] for line in history.splitlines()]
    assert kinds[:2] == ["run_submitted", "task_queued"] and kinds[-1] == "run_succeeded"


def test_a_lease_that_expired_is_in_the_history(cluster: Cluster, marks: str) -> None:
    first = cluster.start_worker()
    cluster.start_beat()
    wf = Workflow("lease")
    wf.task("slow", "tests.slow", params={"seconds": 2.0, "marks": marks, "name": "slow"})
    run = cluster.client().submit(wf)
    wait_until(lambda: count_marks(marks, "started-slow") >= 1, timeout=60, message="never started")

    first.kill()  # the worker and its pool at once: nothing is left to notice but the lease
    cluster.start_worker()

    assert ended(cluster, run.id) is RunState.SUCCEEDED
    history = cli(cluster, "history", run.id).stdout
    lost = lines_of(history, "slow#1")
    assert [line.split()[0] for line in lost] == [
        "task_queued",
        "task_started",
        "task_lost",
        "task_retrying",
    ], history
    assert "by the reconciler" in lost[2] and '"reason": "its lease expired"' in lost[2]
    assert [line.split()[0] for line in lines_of(history, "slow#2")] == [
        "task_queued",
        "task_started",
        "task_succeeded",
    ]
