"""A worker's own figures: its circuit breaker's state and its publish sizes, per process."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gleitzeit import Workflow
from gleitzeit.dispatch import breaker_for
from tests.cluster import started_cluster
from tests.services import free_port, wait_until


def test_the_breaker_state_follows_the_breaker() -> None:
    breaker = breaker_for("redis://127.0.0.1:1/15", reset_seconds=60)

    def state(name: str) -> float | None:
        return REGISTRY.get_sample_value("gleitzeit_circuit_breaker_state", {"state": name})

    assert state("closed") == 1 and state("open") == 0
    breaker.open()
    assert state("open") == 1 and state("closed") == 0
    breaker.close()
    assert state("closed") == 1 and state("half-open") == 0


def _samples(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items()))
            found[key] = sample.value
    return found


def test_a_prefork_worker_serves_what_its_pool_processes_published(tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    port = free_port()
    with started_cluster("sqlite", tmp_path) as cluster:
        cluster.start_worker(
            concurrency=2,
            PROMETHEUS_MULTIPROC_DIR=str(folder),
            GLEITZEIT_WORKER_METRICS_PORT=str(port),
        )
        wf = Workflow("process-metrics")
        wf.task("a", "tests.value", params={"value": 1})
        for i in range(3):
            wf.task(f"b{i}", "tests.add", params={"a": "${a.result}", "b": i})
        cluster.client().submit(wf).wait(timeout=60)

        def published() -> dict[str, float] | None:
            found = _samples(port)
            # the pool process that ran a published its three children in one publish
            if found and found.get("gleitzeit_publish_batch_size_sum", 0) >= 3:
                return found
            return None

        found = wait_until(published, timeout=60, message="the worker never served its figures")

    assert found["gleitzeit_publish_batch_size_bucket,le=5.0"] >= 1
    closed = [v for k, v in found.items() if k.startswith("gleitzeit_circuit_breaker_state,")]
    assert closed and all(
        v == (1 if "state=closed" in k else 0)
        for k, v in found.items()
        if k.startswith("gleitzeit_circuit_breaker_state,")
    )
