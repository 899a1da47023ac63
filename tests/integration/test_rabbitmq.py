"""Whole runs with RabbitMQ as the broker: real Celery worker processes over AMQP.

Runs when ``GLEITZEIT_TEST_AMQP_URL`` names a RabbitMQ server (``.ci/run`` gives the local
one). The tests share that server with whatever else uses it: their messages go to a queue
of their own, deleted at the end, and nothing else on the server is touched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from gleitzeit import Client, Settings, Workflow
from tests import tasks
from tests.cluster import marked_ledger
from tests.services import CeleryWorker
from tests.tasks import count_marks

pytestmark = pytest.mark.integration

AMQP_ENV = "GLEITZEIT_TEST_AMQP_URL"
WAIT = 120


@pytest.fixture(scope="module")
def amqp_url() -> str:
    url = os.environ.get(AMQP_ENV)
    if not url:
        pytest.skip(f"{AMQP_ENV} is not set: no RabbitMQ server to test against")
    return url


@pytest.fixture(scope="module")
def queue(amqp_url: str) -> Iterator[str]:
    """A queue of these tests' own on the shared server, deleted with its exchange after."""
    name = f"gz-test-{secrets.token_hex(4)}"
    yield name
    with Celery(broker=amqp_url).connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)


@pytest.fixture(scope="module")
def amqp_worker(
    amqp_url: str, queue: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    with CeleryWorker.running(
        broker_url=amqp_url,
        database_url=database_url,
        log_dir=tmp_path_factory.mktemp("amqp-worker"),
        queues=[queue],
    ) as started:
        yield started


@pytest.fixture
def amqp_client(amqp_worker: CeleryWorker, amqp_url: str, database_url: str) -> Client:
    return Client(settings=Settings(database_url=database_url, broker_url=amqp_url))


def test_a_diamond_passes_results_between_tasks(amqp_client: Client, queue: str) -> None:
    wf = Workflow("amqp-diamond")
    top = wf.task("top", tasks.value, params={"value": 3}, queue=queue)
    left = wf.task("left", tasks.add, params={"a": top.result, "b": 1}, queue=queue)
    right = wf.task("right", tasks.add, params={"a": top.result, "b": 10}, queue=queue)
    wf.task("bottom", tasks.total, params={"values": [left.result, right.result]}, queue=queue)

    run = amqp_client.submit(wf)

    assert run.wait(timeout=WAIT) == {"top": 3, "left": 4, "right": 13, "bottom": 17}


def test_a_fan_out_of_300_is_published_once_per_attempt(
    amqp_client: Client, queue: str, tmp_path: Path
) -> None:
    # 300 children are published by one worker through kombu's publish batches, which on
    # AMQP send each message at once: every attempt published and marked exactly once
    marks = str(tmp_path)
    wf = Workflow("amqp-fan")
    start = wf.task("start", tasks.value, params={"value": 2}, queue=queue)
    parts = [
        wf.task(f"p{i}", tasks.add, params={"a": start.result, "b": i, "marks": marks}, queue=queue)
        for i in range(300)
    ]
    wf.task("sum", tasks.total, params={"values": [p.result for p in parts]}, queue=queue)

    run = amqp_client.submit(wf)

    assert run.wait(timeout=WAIT)["sum"] == sum(2 + i for i in range(300))
    assert count_marks(marks, "add") == 300
    ledger = marked_ledger(amqp_client.store, run.id)
    assert len(ledger) == 302
    assert all(row.publish_count == 1 and row.published_at is not None for row in ledger)


def test_a_failing_task_is_retried_after_its_backoff(
    amqp_client: Client, queue: str, tmp_path: Path
) -> None:
    # a retry is a message with a countdown: the worker holds it, unacknowledged, until then
    marks = str(tmp_path)
    wf = Workflow("amqp-retry")
    wf.task(
        "flaky",
        tasks.flaky,
        params={"marks": marks, "name": "flaky", "failures": 2, "result": "done"},
        retries=2,
        retry_on=["ConnectionError"],
        backoff={"base": 0.2, "factor": 2, "cap": 1, "jitter": False},
        queue=queue,
    )

    run = amqp_client.submit(wf)

    assert run.wait(timeout=WAIT) == {"flaky": "done"}
    assert [a.state for a in run.tasks["flaky"].attempts] == ["failed", "failed", "succeeded"]
