"""Client messages that need a run in a store: a real SQLite file, the in-memory broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from gleitzeit import Client, GraphChanged, Settings, Workflow


def pair(second: int = 1, *, third: bool = False) -> Workflow:
    wf = Workflow("pair")
    first = wf.task("first", "tests.value", params={"value": 1})
    wf.task("second", "tests.value", params={"value": second}, depends_on=[first])
    if third:
        wf.task("third", "tests.value", params={"value": 3}, depends_on=["second"])
    return wf


@pytest.fixture
def client(tmp_path: Path) -> Client:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", broker_url="memory://")
    return Client(settings=settings)


def test_a_changed_definition_suggests_force(client: Client) -> None:
    run = client.submit(pair())

    with pytest.raises(GraphChanged) as refused:
        client.retry(run.id, workflow=pair(second=2))

    assert "tasks changed: ['second']" in str(refused.value)
    assert "force=True (--force)" in str(refused.value)


@pytest.mark.parametrize("force", [False, True])
def test_a_changed_shape_suggests_a_new_run_and_not_force(client: Client, force: bool) -> None:
    run = client.submit(pair())

    with pytest.raises(GraphChanged) as refused:
        client.retry(run.id, workflow=pair(third=True), force=force)

    message = str(refused.value)
    assert "added: ['third']" in message
    assert "submit the new definition as a new run" in message
    assert "force" not in message  # it would be refused all the same
