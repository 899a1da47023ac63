"""Defining workflows: wf.task, handles, @task defaults, and the data form with its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from gleitzeit.errors import WorkflowValidationError
from gleitzeit.policy import Backoff
from gleitzeit.workflow import (
    ResultRef,
    TaskHandle,
    TaskSpec,
    Workflow,
    hash_json,
    task,
    task_defaults,
)


class FlakyError(Exception):
    """An exception of the user's own, named by module and qualified name."""


@task(retries=3, timeout=60, backoff=5, retry_on=[ConnectionError, FlakyError], queue="io")
def extract(day: str) -> list[dict[str, Any]]:
    return [{"id": 1, "day": day}]


@task
def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows


@task(name="reports.audit", priority=7, backoff={"base": 2, "factor": 3, "cap": 30})
def audit(rows: list[dict[str, Any]]) -> int:
    return len(rows)


def daily_report() -> Workflow:
    wf = Workflow("daily-report")
    ex = wf.task("extract", extract, params={"day": "${inputs.day}"})
    wf.task("clean", clean, params={"rows": "${extract.result}"})
    wf.task("notify", "mail.tasks.send", params={"n": "${clean.result}"}, depends_on=["clean"])
    wf.task("audit", audit, params={"rows": ex.result})
    return wf


# -- wf.task and handles ---------------------------------------------------------------


def test_the_daily_report_example_builds_and_validates() -> None:
    wf = daily_report()
    wf.validate(inputs={"day": "2026-11-21"})
    assert [spec.id for spec in wf.specs] == ["extract", "clean", "notify", "audit"]
    assert wf.tasks["notify"].name == "mail.tasks.send"
    assert wf.tasks["notify"].depends_on == ("clean",)
    assert wf.tasks["audit"].params == {"rows": "${extract.result}"}
    assert repr(wf) == "Workflow('daily-report', 4 tasks)"


def test_the_repr_of_a_workflow_of_one_task_says_task() -> None:
    wf = Workflow("one")
    wf.task("only", clean, params={"rows": []})
    assert repr(wf) == "Workflow('one', 1 task)"


def test_wf_task_returns_a_handle_with_the_task_id() -> None:
    wf = Workflow("w")
    handle = wf.task("a", "app.a")
    assert handle == TaskHandle("a")
    assert handle.result == ResultRef("a")


@pytest.mark.parametrize(
    ("build", "text"),
    [
        (lambda h: h.result, "${ex.result}"),
        (lambda h: h.result["rows"], "${ex.result.rows}"),
        (lambda h: h.result["rows"][0], "${ex.result.rows[0]}"),
        (lambda h: h.result["rows"][0]["id"], "${ex.result.rows[0].id}"),
        (lambda h: h.result[2], "${ex.result[2]}"),
        (lambda h: h, "${ex.result}"),
    ],
)
def test_handle_results_become_reference_strings(build: Any, text: str) -> None:
    wf = Workflow("w")
    handle = wf.task("ex", "app.ex")
    wf.task("use", "app.use", params={"p": build(handle)})
    assert wf.tasks["use"].params == {"p": text}
    built = build(handle)
    assert str(built.result if isinstance(built, TaskHandle) else built) == text


def test_handle_references_are_found_inside_nested_params() -> None:
    wf = Workflow("w")
    ex = wf.task("ex", "app.ex")
    wf.task(
        "use",
        "app.use",
        params={"nested": {"list": [ex.result["a"], "plain", (ex.result[0], 3)]}},
    )
    assert wf.tasks["use"].params == {
        "nested": {"list": ["${ex.result.a}", "plain", ["${ex.result[0]}", 3]]}
    }
    wf.validate()
    assert json.loads(wf.to_json())["tasks"][1]["params"]["nested"]["list"][0] == "${ex.result.a}"


def test_a_handle_reference_makes_the_same_dependency_as_the_string() -> None:
    from gleitzeit.resolver import DependencyResolver

    wf = Workflow("w")
    ex = wf.task("ex", "app.ex")
    wf.task("by_handle", "app.use", params={"p": ex.result["rows"][0]})
    wf.task("by_string", "app.use", params={"p": "${ex.result.rows[0]}"})
    resolver = DependencyResolver(wf)
    assert resolver.parents("by_handle") == resolver.parents("by_string") == ["ex"]


@pytest.mark.parametrize("key", [1.5, None, True, ("a",)])
def test_a_result_path_takes_only_str_keys_and_int_indexes(key: Any) -> None:
    with pytest.raises(TypeError, match="str keys and int indexes"):
        TaskHandle("ex").result[key]


def test_depends_on_accepts_handles_and_ids() -> None:
    wf = Workflow("w")
    a = wf.task("a", "app.a")
    wf.task("b", "app.b")
    wf.task("c", "app.c", depends_on=[a, "b"])
    assert wf.tasks["c"].depends_on == ("a", "b")


def test_wf_task_does_not_keep_the_callers_params() -> None:
    params = {"rows": [1, 2]}
    wf = Workflow("w")
    wf.task("a", "app.a", params=params)
    params["rows"].append(3)
    params["extra"] = True
    assert wf.tasks["a"].params == {"rows": [1, 2]}


def test_a_plain_function_is_not_a_task() -> None:
    def plain() -> None: ...

    with pytest.raises(TypeError, match="not a Celery task"):
        Workflow("w").task("a", plain)


def test_problems_are_reported_by_validate_not_by_wf_task() -> None:
    wf = Workflow("w")
    wf.task("a", "app.a", params={"x": "${ghost.result}"})
    wf.task("a", "app.a")
    with pytest.raises(WorkflowValidationError) as caught:
        wf.validate()
    assert len(caught.value.problems) == 2


# -- @task defaults --------------------------------------------------------------------


def test_task_names_default_to_module_and_function() -> None:
    assert extract.name == f"{__name__}.extract"
    assert clean.name == f"{__name__}.clean"
    assert audit.name == "reports.audit"


def test_a_gleitzeit_task_is_still_a_plain_callable_celery_task() -> None:
    assert extract("2026-11-21") == [{"id": 1, "day": "2026-11-21"}]
    assert callable(extract.delay)


def test_task_defaults_flow_into_wf_task() -> None:
    spec = daily_report().tasks["extract"]
    assert spec.name == f"{__name__}.extract"
    assert spec.retries == 3
    assert spec.timeout == 60
    assert spec.backoff == Backoff(base=5.0)
    assert spec.retry_on == ("ConnectionError", f"{__name__}.FlakyError")
    assert spec.queue == "io"
    assert spec.priority is None


def test_a_bare_task_has_the_documented_defaults() -> None:
    spec = daily_report().tasks["clean"]
    assert spec == TaskSpec(
        id="clean", name=f"{__name__}.clean", params={"rows": "${extract.result}"}
    )
    assert spec.retries == 0
    assert spec.backoff == Backoff()
    assert spec.retry_on == ()
    assert spec.timeout is None
    assert spec.on_failure == "block"


def test_backoff_given_as_a_dict_to_task() -> None:
    assert task_defaults(audit).backoff == Backoff(base=2, factor=3, cap=30)
    assert task_defaults(audit).priority == 7


def test_wf_task_options_override_task_defaults() -> None:
    wf = Workflow("w")
    wf.task(
        "e",
        extract,
        retries=0,
        timeout=5,
        backoff=Backoff(base=0.5, jitter=False),
        retry_on=["TimeoutError"],
        queue="cpu",
        priority=1,
        on_failure="block",
    )
    spec = wf.tasks["e"]
    assert (spec.retries, spec.timeout, spec.queue, spec.priority) == (0, 5, "cpu", 1)
    assert spec.backoff == Backoff(base=0.5, jitter=False)
    assert spec.retry_on == ("TimeoutError",)


def test_a_task_named_by_string_gets_plain_defaults() -> None:
    defaults = task_defaults("mail.tasks.send")
    assert defaults.name == "mail.tasks.send"
    assert defaults.retries == 0
    assert defaults.backoff == Backoff()


def test_an_existing_celery_task_is_named_by_its_name() -> None:
    class CeleryLike:
        name = "legacy.tasks.run"

    assert task_defaults(CeleryLike()).name == "legacy.tasks.run"


# -- the data form: round trips --------------------------------------------------------


def full_workflow() -> Workflow:
    wf = daily_report()
    wf.task(
        "fancy",
        "app.fancy",
        params={"text": "at ${inputs.day}", "lit": "$${HOME}", "n": 1.5, "none": None},
        depends_on=["audit"],
        retries=2,
        backoff={"base": 0.5, "factor": 3.0, "cap": 10.0, "jitter": False},
        retry_on=[KeyError, "app.errors.Transient"],
        timeout=12.5,
        queue="q",
        priority=3,
    )
    return wf


def test_to_dict_names_tasks_by_their_celery_name() -> None:
    data = full_workflow().to_dict()
    assert data["name"] == "daily-report"
    assert [t["task"] for t in data["tasks"]] == [
        f"{__name__}.extract",
        f"{__name__}.clean",
        "mail.tasks.send",
        "reports.audit",
        "app.fancy",
    ]
    assert data["tasks"][4] == {
        "id": "fancy",
        "task": "app.fancy",
        "params": {"text": "at ${inputs.day}", "lit": "$${HOME}", "n": 1.5, "none": None},
        "depends_on": ["audit"],
        "retries": 2,
        "backoff": {"base": 0.5, "factor": 3.0, "cap": 10.0, "jitter": False},
        "retry_on": ["KeyError", "app.errors.Transient"],
        "timeout": 12.5,
        "on_failure": "block",
        "queue": "q",
        "priority": 3,
    }


@pytest.mark.parametrize(
    "reload",
    [
        lambda wf: Workflow.from_dict(wf.to_dict()),
        lambda wf: Workflow.from_dict(json.loads(json.dumps(wf.to_dict()))),
        lambda wf: Workflow.from_json(wf.to_json()),
        lambda wf: Workflow.from_json(wf.to_json(indent=2)),
        lambda wf: Workflow.from_yaml(yaml.safe_dump(wf.to_dict())),
    ],
    ids=["dict", "dict-through-json", "json", "json-indented", "yaml"],
)
def test_the_data_form_round_trips(reload: Any) -> None:
    wf = full_workflow()
    again = reload(wf)
    assert again.name == wf.name
    assert again.specs == wf.specs
    assert again.to_dict() == wf.to_dict()
    again.validate(inputs={"day": "d"})


def test_the_graph_hash_survives_json_and_yaml() -> None:
    # The stored graph hash guards workflow-level retry; the same graph must hash the same
    # whether it was built in Python or read back from JSON/YAML (the CLI and HTTP forms).
    wf = full_workflow()
    assert Workflow.from_json(wf.to_json()).graph_hash() == wf.graph_hash()
    assert Workflow.from_yaml(yaml.safe_dump(wf.to_dict())).graph_hash() == wf.graph_hash()


def test_the_graph_hash_changes_with_the_graph() -> None:
    wf = full_workflow()
    other = full_workflow()
    other.task("one-more", "app.x")
    assert wf.graph_hash() == full_workflow().graph_hash()
    assert other.graph_hash() != wf.graph_hash()


def test_a_hand_written_yaml_workflow_reads() -> None:
    text = """
name: daily-report
description: the example of the docs
tasks:
  - id: extract
    task: app.extract
    params: {day: "${inputs.day}"}
    retries: 3
    backoff: 2
    timeout: 60
  - id: clean
    task: app.clean
    params:
      rows: $<extract.result.rows[0]>
    retry_on: [ConnectionError]
"""
    wf = Workflow.from_yaml(text)
    assert wf.name == "daily-report"
    assert wf.tasks["extract"].backoff == Backoff(base=2.0)
    assert wf.tasks["extract"].timeout == 60.0
    assert wf.tasks["extract"].retries == 3
    assert wf.tasks["clean"].params == {"rows": "$<extract.result.rows[0]>"}
    assert wf.tasks["clean"].retry_on == ("ConnectionError",)
    wf.validate(inputs={"day": "x"}, registered=["app.extract", "app.clean"])


def test_tasks_may_be_a_mapping_by_id() -> None:
    wf = Workflow.from_dict(
        {
            "name": "w",
            "tasks": {
                "a": {"task": "app.a"},
                "b": {"task": "app.b", "params": {"x": "${a.result}"}},
            },
        }
    )
    assert [spec.id for spec in wf.specs] == ["a", "b"]
    assert wf.tasks["b"].params == {"x": "${a.result}"}
    wf.validate()


# -- the data form: bad input ----------------------------------------------------------


def read_problems(data: Any) -> list[str]:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_dict(data, source="wf.yaml")
    assert isinstance(caught.value, ValueError)
    return caught.value.problems


def one_task(**fields: Any) -> dict[str, Any]:
    return {"name": "w", "tasks": [{"id": "a", "task": "app.a"}, {"id": "b", **fields}]}


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ([1, 2], ["wf.yaml", "expected a mapping", "list"]),
        ("text", ["wf.yaml", "expected a mapping", "str"]),
        (None, ["wf.yaml", "expected a mapping", "NoneType"]),
        ({"tasks": []}, ["wf.yaml", "'name'"]),
        ({"name": "", "tasks": []}, ["wf.yaml", "'name'"]),
        ({"name": 3, "tasks": []}, ["wf.yaml", "'name'"]),
        ({"name": "w", "tasks": [], "steps": []}, ["wf.yaml", "unknown top-level", "steps"]),
        ({"name": "w"}, ["wf.yaml", "'tasks'"]),
        ({"name": "w", "tasks": "a,b"}, ["wf.yaml", "'tasks'"]),
        ({"name": "w", "tasks": [1]}, ["wf.yaml: tasks[0]", "expected a mapping", "int"]),
        (one_task(task="app.b", colour="red"), ["tasks[1] (id 'b')", "unknown", "colour"]),
        ({"name": "w", "tasks": [{"task": "app.a"}]}, ["tasks[0]", "missing", "'id'"]),
        (one_task(), ["tasks[1] (id 'b')", "missing", "'task'"]),
        (one_task(task=3), ["tasks[1] (id 'b')", "'task'", "str", "int"]),
        (one_task(task="x", params=[1]), ["tasks[1] (id 'b')", "'params'", "dict", "list"]),
        (one_task(task="x", depends_on="a"), ["tasks[1] (id 'b')", "'depends_on'", "list"]),
        (one_task(task="x", retries="3"), ["tasks[1] (id 'b')", "'retries'", "int", "str"]),
        (one_task(task="x", retries=True), ["tasks[1] (id 'b')", "'retries'", "int", "bool"]),
        (one_task(task="x", retries=1.5), ["tasks[1] (id 'b')", "'retries'", "int", "float"]),
        (one_task(task="x", retry_on="E"), ["tasks[1] (id 'b')", "'retry_on'", "list"]),
        (one_task(task="x", timeout="60"), ["tasks[1] (id 'b')", "'timeout'", "number", "str"]),
        (one_task(task="x", timeout=True), ["tasks[1] (id 'b')", "'timeout'", "number", "bool"]),
        (one_task(task="x", on_failure=1), ["tasks[1] (id 'b')", "'on_failure'", "str"]),
        (one_task(task="x", queue=["q"]), ["tasks[1] (id 'b')", "'queue'", "str", "list"]),
        (one_task(task="x", priority="hi"), ["tasks[1] (id 'b')", "'priority'", "int"]),
        (one_task(task="x", backoff={"slow": 1}), ["tasks[1] (id 'b')", "backoff", "slow"]),
        (one_task(task="x", backoff=True), ["tasks[1] (id 'b')", "backoff"]),
        (one_task(task="x", backoff="fast"), ["tasks[1] (id 'b')", "backoff"]),
    ],
)
def test_bad_data_is_reported_naming_what_and_where(data: Any, fragments: list[str]) -> None:
    problems = read_problems(data)
    assert any(all(f in p for f in fragments) for p in problems), problems


@pytest.mark.parametrize(
    ("backoff", "field"),
    [
        ({"base": "soon"}, "base"),
        ({"factor": "x"}, "factor"),
        ({"cap": None}, "cap"),
        ({"jitter": "yes"}, "jitter"),
    ],
)
def test_backoff_fields_of_the_wrong_type_are_reported(backoff: dict[str, Any], field: str) -> None:
    # Accepted, these would only fail at run time, when compute_backoff does arithmetic on them.
    # Reported either while reading the data or by validate(), but before anything runs.
    try:
        wf = Workflow.from_dict(one_task(task="x", backoff=backoff), source="wf.yaml")
    except WorkflowValidationError as exc:
        problems = exc.problems
    else:
        with pytest.raises(WorkflowValidationError) as caught:
            wf.validate()
        problems = caught.value.problems
    assert any("'b'" in p and "backoff" in p and field in p for p in problems), problems


def test_an_int_timeout_keeps_its_graph_hash_through_the_data_form() -> None:
    wf = Workflow("w")
    wf.task("a", "app.a", timeout=60)
    again = Workflow.from_json(wf.to_json())
    assert again.to_json() == wf.to_json()
    assert again.graph_hash() == wf.graph_hash()


def test_every_bad_field_is_reported_at_once() -> None:
    data = {
        "name": "w",
        "extra": 1,
        "tasks": [
            {"id": "a", "task": "app.a", "retries": "x"},
            {"id": "b", "timeout": "y"},
            "not a task",
        ],
    }
    problems = read_problems(data)
    assert len(problems) == 5
    joined = "\n".join(problems)
    for fragment in ["extra", "'retries'", "'task'", "'timeout'", "tasks[2]"]:
        assert fragment in joined


def test_the_error_names_the_workflow_when_it_can() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_dict(one_task(task=3))
    assert caught.value.workflow == "w"
    assert "workflow 'w' is invalid (1 problem)" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('{"name": "w", "tasks": [}', ["wf.json", "invalid JSON", "line 1", "column"]),
        ('{"name": "w",\n "tasks": [\n  {"id": }]}', ["wf.json", "invalid JSON", "line 3"]),
        ("", ["wf.json", "invalid JSON"]),
        ("[]", ["wf.json", "expected a mapping", "list"]),
    ],
)
def test_bad_json_is_reported_with_line_and_column(text: str, fragments: list[str]) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_json(text, source="wf.json")
    assert len(caught.value.problems) == 1
    assert all(f in caught.value.problems[0] for f in fragments), caught.value.problems


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("name: w\ntasks: [\n", ["wf.yaml", "invalid YAML", "line"]),
        ("name: w\ntasks:\n  - id: a\n   task: b\n", ["wf.yaml", "invalid YAML", "line 4"]),
        ("name: [w\n", ["wf.yaml", "invalid YAML"]),
        ("- a\n- b\n", ["wf.yaml", "expected a mapping", "list"]),
        ("", ["wf.yaml", "expected a mapping", "NoneType"]),
    ],
)
def test_bad_yaml_is_reported_with_its_line(text: str, fragments: list[str]) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_yaml(text, source="wf.yaml")
    assert len(caught.value.problems) == 1
    assert all(f in caught.value.problems[0] for f in fragments), caught.value.problems


def test_yaml_never_builds_python_objects() -> None:
    text = "name: w\ntasks:\n  - id: a\n    task: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_yaml(text, source="evil.yaml")
    assert "evil.yaml" in caught.value.problems[0]


def test_strategies_and_compensations_travel_in_the_data_form() -> None:
    wf = Workflow("saga")
    wf.task("live", "app.live", on_failure="alternative:cached", compensate="app.undo_live")
    wf.task("cached", "app.cached", on_failure="skip")
    again = Workflow.from_yaml(yaml.safe_dump(wf.to_dict()))
    assert again.specs == wf.specs
    assert again.tasks["live"].compensate == "app.undo_live"
    assert again.graph_hash() == wf.graph_hash()


def test_a_graph_without_compensations_keeps_the_hash_it_had_before_they_existed() -> None:
    # runs stored before `compensate` existed must still match their definition on retry
    wf = Workflow("w")
    wf.task("a", "app.x")
    before = {
        "name": "w",
        "tasks": [
            {
                "id": "a",
                "task": "app.x",
                "params": {},
                "depends_on": [],
                "retries": 0,
                "backoff": Backoff().to_dict(),
                "retry_on": [],
                "timeout": None,
                "on_failure": "block",
                "queue": None,
                "priority": None,
            }
        ],
    }
    assert wf.graph_hash() == hash_json(before)


def test_compensate_takes_a_task_or_its_name() -> None:
    wf = Workflow("w")
    wf.task("pay", "app.pay", compensate=extract)
    wf.task("pay2", "app.pay", compensate="app.refund")
    assert wf.tasks["pay"].compensate == "tests.unit.test_workflow.extract"
    assert wf.tasks["pay2"].compensate == "app.refund"
