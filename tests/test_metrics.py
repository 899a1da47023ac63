"""The deployment's metrics after known runs on real workers, and a scrape with the store gone."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gleitzeit.process_metrics  # noqa: F401  (a worker's own figures, on REGISTRY)
from gleitzeit import Settings, Workflow
from gleitzeit.errors import WorkflowFailed
from gleitzeit.metrics import registry_for
from gleitzeit.store import Store
from tests.cluster import started_cluster
from tests.services import REPO_ROOT, free_port, wait_until
from tests.test_cli import GLEITZEIT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of one scrape, by name and labels."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` with these labels among its own."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def chain(name: str) -> Workflow:
    wf = Workflow(name)
    wf.task("a", "tests.value", params={"value": 1})
    wf.task("b", "tests.add", params={"a": "${a.result}", "b": 1})
    wf.task("c", "tests.add", params={"a": "${b.result}", "b": 1})
    return wf


def broken(name: str) -> Workflow:
    wf = Workflow(name)
    wf.task("a", "tests.value", params={"value": 1})
    wf.task("bad", "tests.fail", params={"message": "no ${a.result}"})
    return wf


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_metrics_count_two_runs_succeeded_and_one_failed(store: str, tmp_path: Path) -> None:
    """On a deployment of its own (its store, redis-server and worker), so that the counts
    are exactly these runs'."""
    with started_cluster(store, tmp_path) as cluster:
        cluster.start_worker(concurrency=2)
        client = cluster.client()
        settings = Settings(database_url=cluster.database_url, metrics_settle_seconds=0.2)
        registry, _ = registry_for(settings)
        scrape(registry)  # the exporter starts before the runs: its histograms see them all

        runs = [
            client.submit(chain("ok")),
            client.submit(chain("ok")),
            client.submit(broken("bad")),
        ]
        runs[0].wait(timeout=60)
        runs[1].wait(timeout=60)
        with pytest.raises(WorkflowFailed):
            runs[2].wait(timeout=60)

        def counted() -> Samples | None:
            after = scrape(registry)
            ended = total(after, "gleitzeit_runs_ended_total")
            attempts = total(after, "gleitzeit_task_attempts_total")
            return after if ended == 3 and attempts == 8 else None

        after = wait_until(counted, timeout=60, message="the runs never showed in the metrics")

    assert value(after, "gleitzeit_store_up") == 1
    assert value(after, "gleitzeit_runs_started_total", workflow="ok") == 2
    assert value(after, "gleitzeit_runs_started_total", workflow="bad") == 1
    assert value(after, "gleitzeit_runs_ended_total", workflow="ok", state="succeeded") == 2
    assert value(after, "gleitzeit_runs_ended_total", workflow="bad", state="failed") == 1
    assert total(after, "gleitzeit_runs_ended_total") == 3
    assert value(after, "gleitzeit_runs", workflow="ok", state="running") == 0
    assert total(after, "gleitzeit_tasks") == 0
    # two chains of three and a task that failed after its parent: 8 attempts
    assert (
        value(after, "gleitzeit_task_attempts_total", task="tests.value", outcome="succeeded") == 3
    )
    assert value(after, "gleitzeit_task_attempts_total", task="tests.add", outcome="succeeded") == 4
    assert value(after, "gleitzeit_task_attempts_total", task="tests.fail", outcome="failed") == 1
    assert total(after, "gleitzeit_task_attempts_total") == 8
    assert value(after, "gleitzeit_dispatches_total") == 8
    assert value(after, "gleitzeit_republishes_total") == 0
    assert total(after, "gleitzeit_task_retries_total") == 0
    # edges released: a->b and b->c of each chain, a->bad; and the three roots, made ready
    # by their run's submit
    edges_released, roots = 5, 3
    assert value(after, "gleitzeit_resolution_latency_seconds_count") == edges_released + roots
    assert value(after, "gleitzeit_resolution_latency_seconds_bucket", le="+Inf") == 8
    assert value(after, "gleitzeit_resolution_latency_seconds_sum") > 0
    assert total(after, "gleitzeit_queue_wait_seconds_count") == 8
    assert total(after, "gleitzeit_task_duration_seconds_count") == 8
    assert value(after, "gleitzeit_task_duration_seconds_count", task="tests.add") == 4


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_a_scrape_with_the_store_unreachable_says_so_and_answers(
    where: str, tmp_path: Path
) -> None:
    closed = free_port()
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'nowhere' / 'gleitzeit.db'}",
        "postgresql": f"postgresql://postgres@127.0.0.1:{closed}/gleitzeit",
    }[where]
    registry, _ = registry_for(Settings(database_url=url))

    samples = scrape(registry)

    assert value(samples, "gleitzeit_store_up") == 0
    assert value(samples, "gleitzeit_dispatches_total") == 0
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``gleitzeit metrics`` on a free port of the loopback, over a store of its own."""
    port = free_port()
    env = {**os.environ, "GLEITZEIT_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"}
    subprocess.run([GLEITZEIT, "db", "upgrade"], env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        [GLEITZEIT, "metrics", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield port, process
    finally:
        process.kill()
        process.wait()


def _get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def test_the_metrics_command_serves_and_a_second_one_on_its_port_says_why_not(
    exporter: tuple[int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    port, _ = exporter

    text = wait_until(lambda: _get(port), timeout=60, message="gleitzeit metrics never answered")
    assert "gleitzeit_store_up 1.0" in text
    assert 'gleitzeit_tasks{state="running"} 0.0' in text

    env = {**os.environ, "GLEITZEIT_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"}
    taken = subprocess.run(
        [GLEITZEIT, "metrics", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert taken.returncode != 0
    assert taken.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the first exporter still serves


def _families(text: str) -> dict[str, str]:
    """gleitzeit's metrics in ``text``, as their documents name them, with their type
    (whether or not they have samples yet)."""
    found = {}
    for family in text_string_to_metric_families(text):
        # prometheus_client's own ``_created`` series of a process's counters and histograms
        if family.name.startswith("gleitzeit_") and not family.name.endswith("_created"):
            suffix = "_total" if family.type == "counter" else ""
            found[family.name + suffix] = family.type
    return found


def test_the_docs_dashboard_and_alerts_name_only_metrics_that_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    Store.open(url).record_reconcile_pass({}, 0, host="h", pid=1)
    registry, _ = registry_for(Settings(database_url=url))
    families = _families(generate_latest(registry).decode())
    families |= _families(generate_latest(REGISTRY).decode())  # a worker's own figures
    exposed = set(families) | {
        name + suffix
        for name, kind in families.items()
        if kind == "histogram"
        for suffix in ("_bucket", "_count", "_sum")
    }
    docs = REPO_ROOT / "docs"

    for name in ("observability.md", "grafana-dashboard.json", "alerts.yml"):
        named = set(re.findall(r"gleitzeit_[a-z_]+[a-z]", (docs / name).read_text()))
        assert named, name
        assert named <= exposed, f"{name} names metrics that do not exist: {named - exposed}"
    table = re.findall(r"^\| `(gleitzeit_[a-z_]+)`", (docs / "observability.md").read_text(), re.M)
    assert sorted(table) == sorted(families), "observability.md's tables and the metrics differ"
