"""``gleitzeit health`` against a real deployment: its own redis-server, workers and beat.

Each part is taken away in turn (beat, the broker, the database) and the command, run as
a user runs it, must say which part is down and exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gleitzeit import Settings
from gleitzeit.health import check_health
from gleitzeit.store import migrate
from gleitzeit.store.engine import make_engine
from tests.cluster import started_cluster
from tests.services import REPO_ROOT, free_port, wait_until
from tests.test_cli import GLEITZEIT

#: workers mark themselves seen every second here: gone after three
QUICK = {"GLEITZEIT_WORKER_HEARTBEAT_INTERVAL": "1"}


def health(database_url: str, broker_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    """``gleitzeit health --json`` with these stores: its exit status and its checks."""
    env = {
        **os.environ,
        **QUICK,
        "GLEITZEIT_RECONCILE_INTERVAL": "1",
        "GLEITZEIT_DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
    }
    done = subprocess.run(
        [GLEITZEIT, "health", "--json", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout, done.stderr
    found = json.loads(done.stdout)
    assert found["ok"] is (done.returncode == 0), done.stdout
    return done.returncode, {check["name"]: check for check in found["checks"]}


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_health_says_which_part_is_down(store: str, tmp_path: Path) -> None:
    with started_cluster(store, tmp_path) as cluster:
        cluster.env.update(QUICK)
        worker = cluster.start_worker(concurrency=1)
        cluster.start_beat()
        db, broker = cluster.database_url, cluster.broker_url

        def well() -> dict[str, Any] | None:
            status, checks = health(db, broker)
            return checks if status == 0 else None

        checks = wait_until(well, timeout=90, message="the deployment never became healthy")
        assert checks["store"]["data"]["revision"] == checks["store"]["data"]["head"]
        (seen,) = checks["workers"]["data"]["workers"]
        assert seen["name"].startswith(f"{worker.name}@") and seen["live"]
        assert {"tests.add", "tests.value", "gleitzeit.execute"} <= set(seen["tasks"])
        assert checks["reconciler"]["data"]["passes"] >= 1
        assert all(check["seconds"] >= 0 for check in checks.values())
        status, _ = health(db, broker, "--check", "workers", "--worker", seen["name"])
        assert status == 0

        # beat stopped: its reconciler is missed after three intervals, the rest is well
        assert cluster.beat is not None
        cluster.beat.stop()

        def reconciler_missed() -> dict[str, Any] | None:
            status, checks = health(db, broker)
            return checks if status == 1 and not checks["reconciler"]["ok"] else None

        checks = wait_until(reconciler_missed, timeout=60, message="a stopped beat went unseen")
        assert "last seen" in checks["reconciler"]["detail"]
        assert checks["store"]["ok"] and checks["broker"]["ok"] and checks["workers"]["ok"]

        # the broker stopped: said so, and the store still answers
        cluster.redis.stop()
        status, checks = health(db, broker, "--check", "broker", "--check", "store")
        assert status == 1
        assert not checks["broker"]["ok"] and "broker unreachable" in checks["broker"]["detail"]
        assert checks["store"]["ok"]

        # the worker stopped: missed after three heartbeat intervals
        worker.stop()

        def worker_missed() -> dict[str, Any] | None:
            status, checks = health(db, broker, "--check", "workers")
            return checks if status == 1 else None

        checks = wait_until(worker_missed, timeout=60, message="a stopped worker went unseen")
        assert "no worker seen" in checks["workers"]["detail"]


def test_health_with_the_database_unreachable_exits_1(tmp_path: Path) -> None:
    closed = free_port()
    for url in (
        f"sqlite:///{tmp_path / 'nowhere' / 'gleitzeit.db'}",
        f"postgresql://postgres@127.0.0.1:{closed}/gleitzeit",
    ):
        status, checks = health(url, f"redis://127.0.0.1:{closed}/0")
        assert status == 1
        for name in ("store", "reconciler", "workers"):
            assert not checks[name]["ok"]
            assert checks[name]["detail"].startswith("store unreachable"), checks[name]
        assert not (tmp_path / "nowhere").exists()


def test_health_of_a_store_behind_its_schema_names_the_revisions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0008s")
    engine.dispose()

    found = check_health(Settings(database_url=url), only=["store"])

    assert not found.ok
    assert found.checks[0].detail == ("schema at 0008s, 0009 expected: run gleitzeit db upgrade")
