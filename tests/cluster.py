"""One test's own redis-server, store, Celery workers and beat, with recovery shortened.

For tests that stop, kill or restart what they run on, so that no other test shares it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from gleitzeit import Client, Settings
from gleitzeit.store import Store
from gleitzeit.store.records import DispatchRecord
from tests.conftest import postgres_admin_url
from tests.services import CeleryBeat, CeleryWorker, RedisServer, postgres_database, wait_until

#: recovery settings for every process of a test: leases, timeouts and rounds of seconds
FAST = {
    "GLEITZEIT_LEASE_SECONDS": "3",
    "GLEITZEIT_RECONCILE_INTERVAL": "1",
    "GLEITZEIT_DISPATCH_TIMEOUT": "10",
    "GLEITZEIT_REPUBLISH_AFTER": "2",
    "GLEITZEIT_BREAKER_RESET_SECONDS": "2",
    "GLEITZEIT_STORAGE_RETRY_SECONDS": "60",
}
#: how long a run may take to end once its fault is gone
DEADLINE = 120


def marked_ledger(store: Store, run_id: str) -> list[DispatchRecord]:
    """The run's dispatch ledger once every row is marked published: a worker marks what
    it published with its next transaction, or within ``LEDGER_MARK_DELAY`` seconds."""

    def marked() -> list[DispatchRecord]:
        ledger = store.get_dispatches(run_id)
        return [] if any(row.published_at is None for row in ledger) else ledger

    return wait_until(marked, timeout=30, message=f"ledger rows of run {run_id} left unmarked")


class Cluster:
    """One test's redis-server, store, workers and beat, all started and stopped by it."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.redis = RedisServer.start(tmp / "redis")
        self.workers: list[CeleryWorker] = []
        self.beat: CeleryBeat | None = None
        self.env = dict(FAST)

    @property
    def broker_url(self) -> str:
        return self.redis.url_for(0)

    def settings(self, **env: str) -> Settings:
        given = {
            **self.env,
            **env,
            "GLEITZEIT_DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
        }
        return Settings.from_env(given)

    def client(self) -> Client:
        return Client(settings=self.settings())

    def start_worker(self, *, concurrency: int = 2, **env: str) -> CeleryWorker:
        worker = CeleryWorker.start(
            broker_url=self.broker_url,
            database_url=self.database_url,
            log_dir=self.tmp,
            concurrency=concurrency,
            env={**self.env, **env},
        )
        self.workers.append(worker)
        worker.wait_ready(timeout=60)
        return worker

    def start_beat(self) -> CeleryBeat:
        self.beat = CeleryBeat.start_beat(
            broker_url=self.broker_url,
            database_url=self.database_url,
            log_dir=self.tmp,
            env=self.env,
        )
        self.beat.wait_ready(timeout=60)
        return self.beat

    def _kill_celery(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.beat is not None:
            self.beat.kill()

    def kill_everything(self) -> None:
        self._kill_celery()
        self.redis.kill()

    def close(self) -> None:
        self._kill_celery()
        self.redis.stop()


@contextlib.contextmanager
def started_cluster(store: str, tmp_path: Path) -> Iterator[Cluster]:
    if store == "sqlite":
        started = Cluster(tmp_path, f"sqlite:///{tmp_path / 'gleitzeit.db'}")
        try:
            yield started
        finally:
            started.close()
        return
    with postgres_database(postgres_admin_url()) as url:
        started = Cluster(tmp_path, url)
        try:
            yield started
        finally:
            started.close()
