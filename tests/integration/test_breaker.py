"""Publishing against a real redis-server that goes down or refuses: retries, the breaker,
the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pybreaker
import pytest
import redis

from gleitzeit import Settings, Workflow
from gleitzeit.client import plan_run
from gleitzeit.dispatch import BATCH_MAX, Dispatcher
from gleitzeit.store import Store
from gleitzeit.worker import create_app
from tests.services import CeleryWorker, RedisServer, TcpProxy, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def one_task() -> Workflow:
    wf = Workflow("one")
    wf.task("only", "tests.value", params={"value": 1})
    return wf


def test_the_breaker_opens_on_a_down_broker_and_closes_when_it_is_back(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'gz.db'}", broker_url=own_redis.url)
    store = Store.from_settings(settings)
    breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=1.0)
    dispatcher = Dispatcher(create_app(settings), store, breaker=breaker)
    own_redis.stop()

    claimed = [store.create_run(plan_run(one_task(), {})).dispatches for _ in range(3)]
    published = [dispatcher.publish(d) for d in claimed]

    assert published == [[], [], []]
    assert breaker.current_state == "open"
    failures_when_open = breaker.fail_counter
    assert dispatcher.publish(claimed[0]) == []  # refused by the open breaker, not tried
    assert breaker.fail_counter == failures_when_open
    unpublished = [store.get_dispatches(d[0].run_id)[0].published_at for d in claimed]
    assert unpublished == [None, None, None]  # all of it waits in the ledger

    own_redis.restart()
    wait_until(
        lambda: dispatcher.publish(claimed[0]),
        timeout=30,
        interval=0.2,
        message="publishing never resumed after the broker came back",
    )
    assert breaker.current_state == "closed"
    (row,) = store.get_dispatches(claimed[0][0].run_id)
    assert row.published_at is not None and row.publish_count == 1


def wide(n: int) -> Workflow:
    wf = Workflow("wide")
    for i in range(n):
        wf.task(f"t{i}", "tests.value", params={"value": i})
    return wf


def queued_message_ids(server: RedisServer) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return [json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()


def test_a_batch_cut_off_on_its_way_stays_unpublished_and_the_batches_before_it_published(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", own_redis.port))
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'gz.db'}", broker_url=proxy.url_for(own_redis.url)
    )
    store = Store.from_settings(settings)
    dispatcher = Dispatcher(create_app(settings), store, attempts=2)
    claimed = store.create_run(plan_run(wide(400), {})).dispatches
    proxy.cut_after(100_000)  # the network fails in the middle of the fan-out's batches

    try:
        published = dispatcher.publish(claimed)
    finally:
        proxy.close()

    assert 0 < len(published) < len(claimed)
    assert published == list(claimed[: len(published)])  # whole batches, in order
    in_queue = set(queued_message_ids(own_redis))
    assert {d.message_id for d in published} <= in_queue
    rows = store.get_dispatches(claimed[0].run_id)
    marked = {row.task_id for row in rows if row.published_at is not None}
    assert marked == {d.task_id for d in published}
    # the batch cut off may have reached the broker in part: never counted as published
    # (the reconciler publishes it again, and the attempt's fence turns a copy away)
    assert len(in_queue - {d.message_id for d in published}) < BATCH_MAX


def test_a_worker_logs_each_breaking_setting_as_it_starts(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "riskyconfig.py").write_text("worker_prefetch_multiplier = 8\n")
    worker = CeleryWorker.start(
        broker_url=redis_server.url_for(7),
        database_url=f"sqlite:///{tmp_path / 'gz.db'}",
        log_dir=tmp_path,
        env={
            "GLEITZEIT_CELERY_CONFIG": "riskyconfig",
            "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}",
        },
    )
    try:
        worker.wait_ready(timeout=60)
        assert "gleitzeit: warning: worker_prefetch_multiplier: 8:" in worker.log_text()
    finally:
        worker.stop()
