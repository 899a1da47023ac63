"""Schedules in the store, on real SQLite and PostgreSQL and a real redis-server, with a
fixed clock: adding, refusing, firing, catching up, pausing, and what a tick costs."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, text

from gleitzeit import (
    Client,
    RunState,
    ScheduleConflict,
    ScheduleError,
    ScheduleNotFound,
    Settings,
    Workflow,
    WorkflowValidationError,
)
from gleitzeit.store import Store
from gleitzeit.store.tables import schedules

BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=BERLIN).timestamp()


def stamped(name: str = "stamped") -> Workflow:
    wf = Workflow(name)
    wf.task("stamp", "tests.value", params={"value": "${inputs.scheduled_at}"})
    wf.task("after", "tests.noop", params={"name": "${inputs.region}"}, depends_on=["stamp"])
    return wf


@pytest.fixture
def client(store: Store, broker_url: str, database_url: str) -> Client:
    return Client(settings=Settings(database_url=database_url, broker_url=broker_url))


@pytest.fixture
def name(client: Client) -> Iterator[str]:
    """A schedule name of this test's own, removed after it."""
    found = f"nightly-{secrets.token_hex(4)}"
    yield found
    if any(s.name == found for s in client.schedules()):
        client.unschedule(found)


def hourly(client: Client, name: str, *, catchup: bool, start: datetime) -> None:
    client.schedule(
        name,
        stamped(),
        cron="0 * * * *",
        timezone="Europe/Berlin",
        inputs={"region": "north"},
        catchup=catchup,
        start=start,
    )


def scheduled_runs(client: Client, name: str) -> dict[str, Any]:
    """The runs of a schedule by key, with their inputs."""
    found = client.store.list_runs(name="stamped", limit=1000)
    return {run.key: run for run in found if run.key and run.key.startswith(f"schedule:{name}:")}


def test_adding_stores_the_workflow_in_its_data_form_and_the_first_slot(
    client: Client, name: str
) -> None:
    stored = client.schedule(
        name, stamped(), cron="0 3 * * *", timezone="Europe/Berlin", inputs={"region": "north"}
    )

    assert stored.graph == stamped().to_dict()
    assert stored.graph["tasks"][0]["task"] == "tests.value"
    assert stored.inputs == {"region": "north"} and not stored.paused and not stored.catchup
    assert stored.next_slot > client.store.now() - 1
    assert stored.next_at.endswith(":00+01:00") and "T03:00:00" in stored.next_at
    assert stored.last_at is None and stored.last_run_state is None


def test_adding_the_same_schedule_again_changes_nothing(client: Client, name: str) -> None:
    first = client.schedule(
        name, stamped(), cron="0 3 * * *", timezone="Europe/Berlin", inputs={"region": "north"}
    )
    again = client.schedule(
        name, stamped(), cron="0 3 * * *", timezone="Europe/Berlin", inputs={"region": "north"}
    )

    assert again == first


def test_a_name_taken_by_another_definition_is_refused_naming_what_differs(
    client: Client, name: str
) -> None:
    client.schedule(
        name, stamped(), cron="0 3 * * *", timezone="Europe/Berlin", inputs={"region": "north"}
    )
    other = stamped()
    other.task("extra", "tests.noop")

    differ = r"exists, defined otherwise: its cron expression, workflow and inputs differ"
    with pytest.raises(ScheduleConflict, match=differ):
        client.schedule(
            name, other, cron="0 4 * * *", timezone="Europe/Berlin", inputs={"region": "south"}
        )

    (kept,) = [s for s in client.schedules() if s.name == name]
    assert kept.cron == "0 3 * * *" and kept.inputs == {"region": "north"}


def test_bad_input_is_named_and_nothing_is_stored(client: Client, name: str) -> None:
    with pytest.raises(ScheduleError) as bad:
        client.schedule(
            name,
            stamped(),
            cron="0 25 * * *",
            timezone="Europe/Berlln",
            inputs={"region": "north", "scheduled_at": "x"},
        )
    message = str(bad.value)
    assert f"schedule {name!r} is invalid" in message
    assert "cron expression '0 25 * * *' does not parse" in message
    assert "time zone 'Europe/Berlln' does not exist" in message
    assert "inputs may not name 'scheduled_at'" in message

    wf = Workflow("broken")
    wf.task("a", "tests.value", params={"value": "${nowhere.result}"})
    with pytest.raises(WorkflowValidationError, match="nowhere"):
        client.schedule(name, wf, cron="0 3 * * *")
    with pytest.raises(WorkflowValidationError, match="input 'region'"):
        client.schedule(name, stamped(), cron="0 3 * * *")  # its inputs lack region

    assert name not in {s.name for s in client.schedules()}


def test_a_slot_fires_one_run_with_its_time_as_an_input(client: Client, name: str) -> None:
    hourly(client, name, catchup=False, start=datetime(2026, 11, 21, 3))

    ticked = client.fire_schedules(now=at(2026, 11, 21, 3, 0, 1))
    again = client.fire_schedules(now=at(2026, 11, 21, 3, 0, 2))

    key = f"schedule:{name}:2026-11-21T03:00:00+01:00"
    runs = scheduled_runs(client, name)
    assert list(runs) == [key]
    assert runs[key].inputs == {"region": "north", "scheduled_at": "2026-11-21T03:00:00+01:00"}
    assert [(n, slot) for n, slot, _ in ticked.fired] == [(name, "2026-11-21T03:00:00+01:00")]
    assert ticked.published == 1  # the run's root
    assert [fired for fired in again.fired if fired[0] == name] == []
    (stored,) = [s for s in client.schedules() if s.name == name]
    assert stored.last_at == "2026-11-21T03:00:00+01:00"
    assert stored.next_at == "2026-11-21T04:00:00+01:00"
    assert stored.last_run_id == runs[key].id and stored.last_run_state is RunState.RUNNING


def test_a_schedule_s_own_key_prefixes_its_runs_keys(client: Client, name: str) -> None:
    client.schedule(
        name,
        stamped(),
        cron="0 3 * * *",
        timezone="Europe/Berlin",
        inputs={"region": "north"},
        key=f"report-{name}",
        start=datetime(2026, 11, 21),
    )

    ticked = client.fire_schedules(now=at(2026, 11, 21, 3, 0, 1))
    ((_, slot, run_id),) = [fired for fired in ticked.fired if fired[0] == name]

    assert client.get(run_id).record.key == f"report-{name}:2026-11-21T03:00:00+01:00"
    assert slot == "2026-11-21T03:00:00+01:00"


def test_three_slots_missed_with_catchup_fire_each_oldest_first(client: Client, name: str) -> None:
    hourly(client, name, catchup=True, start=datetime(2026, 11, 21, 3))

    # beat was down from before 03:00 until 05:30: three slots passed
    ticked = client.fire_schedules(now=at(2026, 11, 21, 5, 30))

    slots = ["2026-11-21T03:00:00+01:00", "2026-11-21T04:00:00+01:00", "2026-11-21T05:00:00+01:00"]
    assert [slot for n, slot, _ in ticked.fired if n == name] == slots
    runs = scheduled_runs(client, name)
    assert sorted(runs) == [f"schedule:{name}:{slot}" for slot in slots]
    assert sorted(run.inputs["scheduled_at"] for run in runs.values()) == slots
    # oldest first: the runs were inserted in the order of their slots
    submitted = [client.store.get_events(runs[f"schedule:{name}:{slot}"].id)[0] for slot in slots]
    assert all(event.type == "run_submitted" for event in submitted)
    assert sorted(event.id or 0 for event in submitted) == [event.id for event in submitted]
    (stored,) = [s for s in client.schedules() if s.name == name]
    assert stored.next_at == "2026-11-21T06:00:00+01:00"


def test_three_slots_missed_without_catchup_fire_the_latest_only(client: Client, name: str) -> None:
    hourly(client, name, catchup=False, start=datetime(2026, 11, 21, 3))

    ticked = client.fire_schedules(now=at(2026, 11, 21, 5, 30))

    assert [slot for n, slot, _ in ticked.fired if n == name] == ["2026-11-21T05:00:00+01:00"]
    assert list(scheduled_runs(client, name)) == [f"schedule:{name}:2026-11-21T05:00:00+01:00"]
    (stored,) = [s for s in client.schedules() if s.name == name]
    assert stored.next_at == "2026-11-21T06:00:00+01:00"


def test_the_fall_back_night_fires_a_repeated_time_once(client: Client, name: str) -> None:
    client.schedule(
        name,
        stamped(),
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        inputs={"region": "north"},
        catchup=True,
        start=datetime(2026, 10, 25),
    )

    first = client.fire_schedules(now=at(2026, 10, 25, 2, 45))  # the first pass of 02:45
    # 02:45 in the second pass (CET): an hour later, the same wall-clock time
    second = client.fire_schedules(now=at(2026, 10, 25, 2, 45) + 3600)

    assert [slot for n, slot, _ in first.fired if n == name] == ["2026-10-25T02:30:00+02:00"]
    assert [slot for n, slot, _ in second.fired if n == name] == []
    (stored,) = [s for s in client.schedules() if s.name == name]
    assert stored.next_at == "2026-10-26T02:30:00+01:00"


def test_catchup_fires_at_most_its_limit_per_tick(
    client: Client, name: str, broker_url: str, database_url: str
) -> None:
    limited = Client(
        settings=Settings(
            database_url=database_url, broker_url=broker_url, schedule_catchup_limit=2
        )
    )
    hourly(limited, name, catchup=True, start=datetime(2026, 11, 21, 3))
    now = at(2026, 11, 21, 7, 30)  # five slots passed

    fired = [
        len([f for f in limited.fire_schedules(now=now).fired if f[0] == name]) for _ in range(4)
    ]

    assert fired == [2, 2, 1, 0]
    assert len(scheduled_runs(client, name)) == 5


def test_a_paused_schedule_fires_nothing_and_resumes_from_the_next_slot(
    client: Client, name: str
) -> None:
    hourly(client, name, catchup=True, start=datetime(2026, 11, 21, 3))

    assert client.pause_schedule(name) is True
    assert client.pause_schedule(name) is False
    assert [
        f for f in client.fire_schedules(now=at(2026, 11, 21, 5, 30)).fired if f[0] == name
    ] == []
    assert client.resume_schedule(name) is True
    assert client.resume_schedule(name) is False

    (stored,) = [s for s in client.schedules() if s.name == name]
    now = client.store.now()
    # the slots passed while paused are not fired: the next is the first after now
    assert now < stored.next_slot <= now + 3600
    assert scheduled_runs(client, name) == {}


def test_removing_keeps_the_runs_and_unknown_names_are_refused(client: Client, name: str) -> None:
    hourly(client, name, catchup=False, start=datetime(2026, 11, 21, 3))
    client.fire_schedules(now=at(2026, 11, 21, 3, 30))

    client.unschedule(name)

    assert name not in {s.name for s in client.schedules()}
    assert len(scheduled_runs(client, name)) == 1
    for call in (client.unschedule, client.pause_schedule, client.resume_schedule):
        with pytest.raises(ScheduleNotFound, match=f"no schedule named {name!r}"):
            call(name)


def test_a_schedule_added_again_with_another_workflow_keeps_each_slot_s_first_run(
    client: Client, name: str
) -> None:
    hourly(client, name, catchup=False, start=datetime(2026, 11, 21, 3))
    client.fire_schedules(now=at(2026, 11, 21, 3, 30))
    (first,) = scheduled_runs(client, name).values()
    client.unschedule(name)
    other = stamped()
    other.task("extra", "tests.noop")
    client.schedule(
        name,
        other,
        cron="0 * * * *",
        timezone="Europe/Berlin",
        inputs={"region": "north"},
        start=datetime(2026, 11, 21, 3),
    )

    ticked = client.fire_schedules(now=at(2026, 11, 21, 3, 30))

    # the slot's key names the first run: it stays that slot's run, no second one
    assert [(n, run_id) for n, _, run_id in ticked.fired if n == name] == [(name, first.id)]
    # by id and key: a worker of the session may be running the run meanwhile
    assert [(run.id, run.key) for run in scheduled_runs(client, name).values()] == [
        (first.id, first.key)
    ]


def test_a_tick_with_nothing_due_is_one_search_of_the_index(client: Client, store: Store) -> None:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        ticked = client.fire_schedules(now=1.0)  # 1970: nothing is due
    finally:
        event.remove(store.engine, "before_cursor_execute", record)

    assert ticked.fired == [] and ticked.failed == []
    # SQLite's read transaction is opened by a BEGIN of gleitzeit's engine
    queries = [(s, p) for s, p in seen if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert len(queries) == 1, [statement for statement, _ in seen]
    statement, parameters = queries[0]
    assert "FROM gz_schedules" in statement
    assert_searches_the_index(store, plan(store, statement, parameters))


def test_the_tick_on_the_database_s_clock_searches_the_index_too(store: Store) -> None:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.find_due_schedules()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)

    (statement, parameters), *_ = [s for s in seen if "FROM gz_schedules" in s[0]]
    assert_searches_the_index(store, plan(store, statement, parameters))


def assert_searches_the_index(store: Store, found: str) -> None:
    """Both conditions, on paused and on the next slot, are searched in the index: the rows
    not due are never read."""
    if store.engine.dialect.name == "sqlite":
        assert "SEARCH gz_schedules USING INDEX ix_gz_schedules_due (paused=? AND next_slot<?)" in (
            found
        ), found
    else:
        assert "Index Scan on ix_gz_schedules_due" in found, found
        assert re.search(r"Index Cond: \(\(paused = false\) AND \(next_slot <= ", found), found


def plan(store: Store, statement: str, parameters: Any) -> str:
    """How the database runs ``statement``. PostgreSQL is told to avoid a sequential scan,
    which it prefers on a table this small: the plan then shows whether the index serves."""
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        if store.engine.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            found = " / ".join(str(row[-1]) for row in cursor.fetchall())
        else:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            found = " / ".join(str(row[0]) for row in cursor.fetchall())
            cursor.execute("RESET enable_seqscan")
        conn.rollback()
    return found


def test_the_due_index_is_on_paused_and_next_slot(store: Store) -> None:
    (index,) = schedules.indexes
    assert [column.name for column in index.columns] == ["paused", "next_slot"]
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            rows = conn.execute(text("PRAGMA index_info(ix_gz_schedules_due)")).all()
            assert [row[2] for row in rows] == ["paused", "next_slot"]
