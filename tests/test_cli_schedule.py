"""``gleitzeit schedule``, run as a user runs it (a real subprocess), on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gleitzeit import Client, Settings
from tests.services import RedisServer
from tests.test_cli import gleitzeit

WORKFLOW = {
    "name": "nightly-report",
    "tasks": [
        {"id": "stamp", "task": "tests.value", "params": {"value": "${inputs.scheduled_at}"}},
        {"id": "region", "task": "tests.value", "params": {"value": "${inputs.region}"}},
    ],
}


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("GLEITZEIT_DATABASE_URL", url)
    return url


def test_schedule_add_list_pause_resume_remove(
    tmp_path: Path, database_url: str, redis_server: RedisServer
) -> None:
    flow = tmp_path / "nightly.json"
    flow.write_text(json.dumps(WORKFLOW))
    add = ("schedule", "add", str(flow), "--cron", "0 3 * * *", "--timezone", "Europe/Berlin")

    added = gleitzeit(*add, "-i", "region=north")
    again = gleitzeit(*add, "-i", "region=north")
    taken = gleitzeit(*add, "-i", "region=south")
    bad = gleitzeit(
        "schedule", "add", str(flow), "--cron", "0 3 * *", "--timezone", "Europe/Berln",
        "--name", "broken",
    )  # fmt: skip

    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("schedule nightly-report: 0 3 * * * (Europe/Berlin), next ")
    assert "T03:00:00+01:00" in added.stdout
    assert again.returncode == 0 and again.stdout == added.stdout
    assert taken.returncode == 1
    assert "schedule 'nightly-report' exists, defined otherwise: its inputs differ" in taken.stderr
    assert bad.returncode == 1
    assert "cron expression '0 3 * *' has 4 fields" in bad.stderr
    assert "time zone 'Europe/Berln' does not exist" in bad.stderr

    listed = gleitzeit("schedule", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("\n") == 1 and "never fired" in listed.stdout

    # beat's tick, at the schedule's first slot
    client = Client(
        settings=Settings(database_url=database_url, broker_url=redis_server.url_for(2))
    )
    (stored,) = client.schedules()
    ticked = client.fire_schedules(now=stored.next_slot + 1)
    ((_, slot, run_id),) = ticked.fired
    assert client.get(run_id).record.inputs == {"region": "north", "scheduled_at": slot}

    listed = gleitzeit("schedule", "list")
    assert f"last {slot} run {run_id} running" in listed.stdout
    assert f"next {client.schedules()[0].next_at}" in listed.stdout

    assert gleitzeit("schedule", "pause", "nightly-report").stdout == (
        "schedule nightly-report paused\n"
    )
    assert " paused " in (paused := gleitzeit("schedule", "list").stdout)
    assert "next on resume" in paused
    assert gleitzeit("schedule", "resume", "nightly-report").stdout == (
        "schedule nightly-report resumed\n"
    )
    assert gleitzeit("schedule", "remove", "nightly-report").returncode == 0
    gone = gleitzeit("schedule", "remove", "nightly-report")
    assert gone.returncode == 1 and "no schedule named 'nightly-report'" in gone.stderr
    assert gleitzeit("schedule", "list").stdout == ""
