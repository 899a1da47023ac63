"""Whole runs on real Celery worker processes, a real redis-server and both stores."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event

from gleitzeit import (
    Client,
    IdempotencyConflict,
    RunState,
    TaskState,
    Workflow,
    WorkflowFailed,
    WorkflowValidationError,
)
from gleitzeit.dispatch import EXECUTE_TASK
from gleitzeit.store.records import RunProgress
from tests import tasks
from tests.cluster import marked_ledger
from tests.services import wait_until
from tests.tasks import count_marks

pytestmark = pytest.mark.integration

WAIT = 120


def assert_dispatched_once(client: Client, run_id: str) -> None:
    """Every attempt of the run has exactly one ledger row, published once."""
    ledger = marked_ledger(client.store, run_id)
    attempts = {(row.task_id, row.attempt) for row in ledger}
    assert len(attempts) == len(ledger)
    assert all(row.publish_count == 1 and row.published_at is not None for row in ledger)
    for task_id, task in client.get(run_id).tasks.items():
        assert {a for t, a in attempts if t == task_id} == set(range(1, task.attempt + 1))


def test_diamond(client: Client, marks: str) -> None:
    wf = Workflow("diamond")
    top = wf.task("top", tasks.value, params={"value": 3, "marks": marks, "name": "top"})
    left = wf.task("left", tasks.add, params={"a": top.result, "b": 1, "marks": marks})
    right = wf.task("right", tasks.add, params={"a": top.result, "b": 10, "marks": marks})
    wf.task("bottom", tasks.total, params={"values": [left.result, right.result], "marks": marks})

    run = client.submit(wf)
    results = run.wait(timeout=WAIT)

    assert results == {"top": 3, "left": 4, "right": 13, "bottom": 17}
    assert run.status == "succeeded"
    assert (count_marks(marks, "top"), count_marks(marks, "add"), count_marks(marks, "total")) == (
        1,
        2,
        1,
    )
    assert_dispatched_once(client, run.id)
    order = [e.task_id for e in run.history() if e.type == "task_succeeded"]
    assert order.index("top") < order.index("left") < order.index("bottom")
    assert order.index("right") < order.index("bottom")


def test_fan_out_fan_in_of_50(client: Client, marks: str) -> None:
    wf = Workflow("fan-50")
    start = wf.task("start", tasks.value, params={"value": 2})
    parts = [
        wf.task(f"part{i}", tasks.add, params={"a": start.result, "b": i, "marks": marks})
        for i in range(50)
    ]
    wf.task("sum", tasks.total, params={"values": [p.result for p in parts], "marks": marks})

    results = client.submit(wf).wait(timeout=WAIT)

    assert results["sum"] == sum(2 + i for i in range(50))
    assert count_marks(marks, "add") == 50
    assert count_marks(marks, "total") == 1


def test_chain_of_100(client: Client, marks: str) -> None:
    wf = Workflow("chain-100")
    previous = wf.task("step0", tasks.value, params={"value": 0})
    for i in range(1, 100):
        previous = wf.task(f"step{i}", tasks.add, params={"a": previous.result, "b": 1})

    run = client.submit(wf)
    results = run.wait(timeout=WAIT)

    assert results["step99"] == 99
    assert len(results) == 100
    assert_dispatched_once(client, run.id)


def test_waiting_on_a_run_polls_its_progress_not_its_definition(client: Client) -> None:
    wf = Workflow("chain-20")
    previous = wf.task("step0", tasks.value, params={"value": 0})
    for i in range(1, 20):
        previous = wf.task(f"step{i}", tasks.add, params={"a": previous.result, "b": 1})
    run = client.submit(wf)
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(client.store.engine, "before_cursor_execute", record)
    try:
        assert run.wait(timeout=WAIT)["step19"] == 19
    finally:
        event.remove(client.store.engine, "before_cursor_execute", record)

    polls = [s for s in seen if "FROM gz_runs" in s]
    assert polls, "wait read nothing"
    assert not [s for s in seen if "gz_run_definitions" in s]
    assert run.progress == RunProgress(RunState.SUCCEEDED, 20, 0, 0)


def test_references_keep_types_and_render_in_strings(client: Client) -> None:
    payload = {"rows": [{"id": 7, "tags": ["a", "b"]}], "count": 1, "none": None}
    wf = Workflow("types")
    src = wf.task("src", tasks.value, params={"value": payload})
    wf.task(
        "check",
        tasks.describe,
        params={
            "whole": src.result,
            "rows": "${src.result.rows}",
            "first_id": src.result["rows"][0]["id"],
            "tag": "$<src.result.rows[0].tags.1>",
            "none": "${src.result.none}",
            "text": "id=${src.result.rows.0.id} tags=${src.result.rows.0.tags}",
            "literal": "$${src.result}",
            "day": "${inputs.day}",
        },
    )

    results = client.submit(wf, inputs={"day": "2026-11-21"}).wait(timeout=WAIT)

    check = results["check"]
    assert check["params"]["whole"] == payload
    assert check["types"] == {
        "whole": "dict",
        "rows": "list",
        "first_id": "int",
        "tag": "str",
        "none": "NoneType",
        "text": "str",
        "literal": "str",
        "day": "str",
    }
    assert check["params"]["text"] == 'id=7 tags=["a", "b"]'
    assert check["params"]["literal"] == "${src.result}"
    assert check["params"]["tag"] == "b"


def test_flaky_task_succeeds_on_retry(client: Client, marks: str) -> None:
    wf = Workflow("flaky")
    flaky = wf.task(
        "flaky",
        tasks.flaky,
        params={"marks": marks, "name": "flaky", "failures": 2, "result": 42},
        retries=3,
        backoff={"base": 0.05, "factor": 2.0, "cap": 1.0, "jitter": True},
        retry_on=[ConnectionError],
    )
    wf.task("after", tasks.add, params={"a": flaky.result, "b": 1})

    run = client.submit(wf)
    results = run.wait(timeout=WAIT)

    assert results == {"flaky": 42, "after": 43}
    record = run.tasks["flaky"]
    assert record.attempt == 3
    assert [a.state for a in record.attempts] == ["failed", "failed", "succeeded"]
    assert record.attempts[0].error_type == "ConnectionError"
    assert "transient failure" in (record.attempts[0].error_message or "")
    assert "Traceback" in (record.attempts[0].traceback or "")
    assert count_marks(marks, "flaky") == 3
    assert_dispatched_once(client, run.id)


def test_retry_on_other_errors_does_not_retry(client: Client, marks: str) -> None:
    wf = Workflow("no-retry")
    wf.task(
        "broken",
        tasks.fail,
        params={"marks": marks},
        retries=5,
        backoff=0.01,
        retry_on=[ConnectionError],
    )

    run = client.submit(wf)
    with pytest.raises(WorkflowFailed):
        run.wait(timeout=WAIT)

    assert count_marks(marks, "fail") == 1
    assert run.tasks["broken"].attempt == 1


def test_failure_blocks_dependents_while_other_branch_succeeds(client: Client, marks: str) -> None:
    wf = Workflow("blocking")
    bad = wf.task("bad", tasks.fail, params={"message": "disk on fire"})
    child = wf.task("child", tasks.value, params={"value": bad.result})
    wf.task("grandchild", tasks.value, params={"value": child.result, "marks": marks})
    good = wf.task("good", tasks.value, params={"value": "fine", "marks": marks, "name": "good"})
    wf.task("good_after", tasks.value, params={"value": good.result, "marks": marks})

    run = client.submit(wf)
    with pytest.raises(WorkflowFailed) as failed:
        run.wait(timeout=WAIT)

    assert failed.value.status == "failed"
    assert list(failed.value.errors) == ["bad"]
    assert "ValueError: disk on fire" in failed.value.errors["bad"]
    states = {task_id: task.state for task_id, task in run.tasks.items()}
    assert states == {
        "bad": TaskState.FAILED,
        "child": TaskState.BLOCKED,
        "grandchild": TaskState.BLOCKED,
        "good": TaskState.SUCCEEDED,
        "good_after": TaskState.SUCCEEDED,
    }
    assert run.results() == {"good": "fine", "good_after": "fine"}
    assert count_marks(marks, "value") == 1  # good_after ran; grandchild never did


def test_existing_celery_task_by_name(client: Client) -> None:
    wf = Workflow("legacy")
    x = wf.task("x", tasks.value, params={"value": 6})
    wf.task("product", "legacy.multiply", params={"x": x.result, "y": 7})

    assert client.submit(wf).wait(timeout=WAIT) == {"x": 6, "product": 42}


def test_timeout_fails_the_task_through_celery_time_limits(client: Client) -> None:
    wf = Workflow("timeout")
    wf.task("slow", tasks.sleep, params={"seconds": 30}, timeout=1)

    run = client.submit(wf)
    with pytest.raises(WorkflowFailed) as failed:
        run.wait(timeout=WAIT)

    assert "SoftTimeLimitExceeded" in failed.value.errors["slow"]


@pytest.mark.parametrize(
    ("fn", "params", "expected"),
    [
        (tasks.not_json, {}, "not JSON"),
        (tasks.big, {"size": 2 * 1024 * 1024}, "over the limit of 1048576 bytes"),
    ],
)
def test_a_bad_result_fails_the_task_not_the_worker(
    client: Client, fn: object, params: dict[str, int], expected: str
) -> None:
    wf = Workflow("bad-result")
    wf.task("bad", fn, params=params, retries=2)

    run = client.submit(wf)
    with pytest.raises(WorkflowFailed) as failed:
        run.wait(timeout=WAIT)

    assert expected in failed.value.errors["bad"]
    assert run.tasks["bad"].attempt == 1  # a bad result is not retried
    healthy = Workflow("after-bad-result")
    healthy.task("ok", tasks.value, params={"value": 1})
    assert client.submit(healthy).wait(timeout=WAIT) == {"ok": 1}


def test_missing_path_at_run_time_fails_naming_the_reference(client: Client) -> None:
    wf = Workflow("missing-path")
    src = wf.task("src", tasks.value, params={"value": {"rows": []}})
    wf.task("use", tasks.value, params={"value": "${src.result.rows.0.id}"})

    with pytest.raises(WorkflowFailed) as failed:
        client.submit(wf).wait(timeout=WAIT)

    assert "${src.result.rows.0.id}" in failed.value.errors["use"]
    assert src.id == "src"


def test_unknown_task_name_on_the_worker_fails_clearly(client: Client) -> None:
    wf = Workflow("unknown-name")
    wf.task("ghost", "nowhere.to_be_found", params={})

    with pytest.raises(WorkflowFailed) as failed:
        client.submit(wf).wait(timeout=WAIT)

    assert "no Celery task named 'nowhere.to_be_found'" in failed.value.errors["ghost"]


def test_a_duplicate_message_does_no_work(client: Client, marks: str) -> None:
    wf = Workflow("duplicate")
    wf.task("once", tasks.noop, params={"marks": marks, "name": "once"})
    run = client.submit(wf)
    run.wait(timeout=WAIT)

    ledger = client.store.get_dispatches(run.id)
    client.app.send_task(EXECUTE_TASK, args=(run.id, "once", 1), task_id=ledger[0].message_id)

    wait_until(
        lambda: any(e.type == "delivery_ignored" for e in run.history()),
        timeout=WAIT,
        message="the duplicate delivery was never seen by a worker",
    )
    assert count_marks(marks, "once") == 1
    assert len(run.tasks["once"].attempts) == 1
    assert len(client.store.get_dispatches(run.id)) == 1


def test_submit_with_key_is_idempotent(client: Client) -> None:
    key = f"report/{uuid.uuid4()}"
    wf = Workflow("keyed")
    wf.task("one", tasks.value, params={"value": "${inputs.n}"})

    first = client.submit(wf, inputs={"n": 1}, key=key)
    again = client.submit(wf, inputs={"n": 1}, key=key)
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict, match="inputs"):
        client.submit(wf, inputs={"n": 2}, key=key)
    assert first.wait(timeout=WAIT) == {"one": 1}
    assert [r.id for r in client.runs(name="keyed", limit=1000) if r.key == key] == [first.id]


def test_an_invalid_workflow_persists_nothing(client: Client) -> None:
    before = len(client.runs(limit=10_000))
    wf = Workflow("invalid")
    wf.task("a", tasks.value, params={"value": "${b.result}"})
    wf.task("b", tasks.value, params={"value": "${a.result}"})
    wf.task("c", tasks.value, params={"value": "${nope.result}"})

    with pytest.raises(WorkflowValidationError) as invalid:
        client.submit(wf)

    assert any("a -> b -> a" in p for p in invalid.value.problems)
    assert any("'nope'" in p for p in invalid.value.problems)
    assert len(client.runs(limit=10_000)) == before
