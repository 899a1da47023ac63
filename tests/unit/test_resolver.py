"""DependencyResolver: the graph, its order, and every validation problem reported at once."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gleitzeit.errors import WorkflowValidationError
from gleitzeit.resolver import DependencyResolver
from gleitzeit.workflow import TaskSpec, Workflow


def chain(n: int) -> Workflow:
    wf = Workflow(f"chain-{n}")
    wf.task("t0", "app.step", params={"day": "${inputs.day}"})
    for i in range(1, n):
        wf.task(f"t{i}", "app.step", params={"prev": f"${{t{i - 1}.result}}"})
    return wf


def problems_of(wf: Workflow, **kwargs: Any) -> list[str]:
    with pytest.raises(WorkflowValidationError) as caught:
        wf.validate(**kwargs)
    return caught.value.problems


def contains(problems: list[str], *fragments: str) -> bool:
    return any(all(f in p for f in fragments) for p in problems)


# -- the graph -------------------------------------------------------------------------


def diamond() -> Workflow:
    wf = Workflow("diamond")
    wf.task("extract", "app.extract", params={"day": "${inputs.day}"})
    wf.task("left", "app.left", params={"rows": "${extract.result.rows}"})
    wf.task("right", "app.right", params={"first": "$<extract.result.rows[0]>"})
    wf.task(
        "join",
        "app.join",
        params={"both": ["${left.result}", "n=${right.result.n}"]},
        depends_on=["extract"],
    )
    wf.task("notify", "app.notify", depends_on=["join"])
    return wf


def test_dependencies_come_from_references_and_depends_on() -> None:
    resolver = DependencyResolver(diamond())
    assert resolver.parents("extract") == []
    assert resolver.parents("left") == ["extract"]
    assert resolver.parents("right") == ["extract"]
    assert sorted(resolver.parents("join")) == ["extract", "left", "right"]
    assert resolver.parents("notify") == ["join"]
    assert sorted(resolver.children("extract")) == ["join", "left", "right"]
    assert resolver.roots() == ["extract"]


def test_result_sources_are_referenced_tasks_only() -> None:
    resolver = DependencyResolver(diamond())
    assert resolver.result_sources("extract") == []
    assert resolver.result_sources("join") == ["left", "right"]
    assert resolver.result_sources("notify") == []
    assert resolver.input_names() == {"day"}


def test_a_repeated_reference_makes_one_edge() -> None:
    wf = Workflow("w")
    wf.task("a", "app.a")
    wf.task("b", "app.b", params={"x": "${a.result}", "y": "${a.result.k}"}, depends_on=["a"])
    resolver = DependencyResolver(wf)
    assert resolver.parents("b") == ["a"]
    assert resolver.result_sources("b") == ["a"]


def test_input_references_make_no_edges() -> None:
    wf = Workflow("w")
    wf.task("a", "app.a", params={"d": "${inputs.day}"})
    wf.task("b", "app.b", params={"d": "$<inputs.day>"})
    resolver = DependencyResolver(wf)
    assert sorted(resolver.roots()) == ["a", "b"]
    assert resolver.graph.number_of_edges() == 0


def assert_topological(resolver: DependencyResolver, wf: Workflow) -> None:
    order = resolver.order()
    assert sorted(order) == sorted(spec.id for spec in wf.specs)
    position = {task: i for i, task in enumerate(order)}
    for parent, child in resolver.graph.edges:
        assert position[parent] < position[child], (parent, child)


def test_order_respects_every_edge() -> None:
    wf = diamond()
    resolver = DependencyResolver(wf)
    assert_topological(resolver, wf)
    assert resolver.order()[0] == "extract"
    assert resolver.order()[-1] == "notify"


def test_a_valid_workflow_has_no_problems() -> None:
    wf = diamond()
    assert DependencyResolver(wf).problems() == []
    wf.validate()
    wf.validate(inputs={"day": "2026-11-21"})
    wf.validate(
        inputs={"day": "x", "extra": 1},
        registered=["app.extract", "app.left", "app.right", "app.join", "app.notify", "x"],
    )


# -- every problem at once -------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    wf = Workflow("broken")
    # a cycle a -> b -> c -> a, built from references and depends_on
    wf.task("a", "app.a", params={"x": "${c.result}"})
    wf.task("b", "app.b", params={"x": "${a.result.k}"})
    wf.task("c", "app.c", depends_on=["b"])
    wf.task("dangling", "app.d", params={"x": "${ghost.result}"})
    wf.task("selfish", "app.s", depends_on=["selfish"])
    wf.task("twice", "app.t")
    wf.task("twice", "app.t")
    wf.task("malformed", "app.m", params={"x": "${a}"})
    wf.task("bad id", "app.b")
    wf.task("nan", "app.n", params={"x": float("nan")})
    wf.task("object", "app.o", params={"x": object()})

    with pytest.raises(WorkflowValidationError) as caught:
        wf.validate()
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.workflow == "broken"
    problems = error.problems

    assert "cycle: a -> b -> c -> a" in problems
    assert contains(problems, "'dangling'", "ghost")
    assert contains(problems, "'selfish'", "depends on itself")
    assert contains(problems, "duplicate", "'twice'")
    assert contains(problems, "'malformed'", "${a}")
    assert contains(problems, "'bad id'", "letters, digits")
    assert contains(problems, "'nan'", "not JSON")
    assert contains(problems, "'object'", "not JSON")
    assert len(problems) == 8
    for problem in problems:
        assert problem in str(error)


@pytest.mark.parametrize(
    "edges",
    [
        [("a", "b"), ("b", "c"), ("c", "a")],
        [("c", "a"), ("b", "c"), ("a", "b")],
    ],
)
def test_a_cycle_is_named_as_a_path(edges: list[tuple[str, str]]) -> None:
    wf = Workflow("w")
    parents: dict[str, list[str]] = {}
    for parent, child in edges:
        parents.setdefault(child, []).append(parent)
    for child in sorted(parents):
        wf.task(child, "app.x", depends_on=parents[child])
    assert problems_of(wf) == ["cycle: a -> b -> c -> a"]


def test_two_separate_cycles_are_both_named() -> None:
    wf = Workflow("w")
    wf.task("a", "app.x", params={"p": "${b.result}"})
    wf.task("b", "app.x", params={"p": "${a.result}"})
    wf.task("x", "app.x", depends_on=["z"])
    wf.task("y", "app.x", depends_on=["x"])
    wf.task("z", "app.x", depends_on=["y"])
    problems = problems_of(wf)
    assert sorted(problems) == ["cycle: a -> b -> a", "cycle: x -> y -> z -> x"]


@pytest.mark.parametrize(
    ("params", "depends_on", "fragment"),
    [
        ({"x": "${me.result}"}, [], "${me.result}"),
        ({"x": "pre ${me.result.k} post"}, [], "${me.result.k}"),
        ({}, ["me"], "depends_on"),
    ],
)
def test_a_task_that_depends_on_itself_is_reported(
    params: dict[str, Any], depends_on: list[str], fragment: str
) -> None:
    wf = Workflow("w")
    wf.task("me", "app.x", params=params, depends_on=depends_on)
    problems = problems_of(wf)
    assert len(problems) == 1
    assert contains(problems, "'me'", "depends on itself", fragment)


@pytest.mark.parametrize(
    ("params", "depends_on", "fragment"),
    [
        ({"x": "${ghost.result}"}, [], "${ghost.result}"),
        ({"x": ["${ghost.result.rows[0]}"]}, [], "${ghost.result.rows[0]}"),
        ({}, ["ghost"], "depends_on"),
    ],
)
def test_a_reference_to_a_missing_task_is_reported(
    params: dict[str, Any], depends_on: list[str], fragment: str
) -> None:
    wf = Workflow("w")
    wf.task("t", "app.x", params=params, depends_on=depends_on)
    problems = problems_of(wf)
    assert len(problems) == 1
    assert contains(problems, "'t'", "'ghost'", fragment)


@pytest.mark.parametrize(
    ("param", "fragment"),
    [
        ("${a.result", "unclosed"),
        ("${a}", "${a}"),
        ("${inputs}", "${inputs}"),
        ("${a.result.x y}", "${a.result.x y}"),
        ("$<a.rows>", "$<a.rows>"),
    ],
)
def test_a_malformed_reference_is_reported_with_its_location(param: str, fragment: str) -> None:
    wf = Workflow("w")
    wf.task("a", "app.x")
    wf.task("t", "app.x", params={"nested": {"list": ["ok", param]}})
    problems = problems_of(wf)
    assert len(problems) == 1
    assert contains(problems, "'t'", "params.nested.list[1]", fragment)


@pytest.mark.parametrize("bad_id", ["bad id", "a.b", "", "ü", "x/y", "${x}"])
def test_bad_task_ids_are_reported(bad_id: str) -> None:
    wf = Workflow("w")
    wf.task(bad_id, "app.x")
    assert contains(problems_of(wf), repr(bad_id), "letters, digits")


@pytest.mark.parametrize("good_id", ["a", "A-1", "snake_case", "0", "x-y_z9"])
def test_good_task_ids_pass(good_id: str) -> None:
    wf = Workflow("w")
    wf.task(good_id, "app.x")
    wf.validate()


def test_inputs_is_not_a_task_id() -> None:
    wf = Workflow("w")
    wf.task("inputs", "app.x")
    assert contains(problems_of(wf), "'inputs'", "reserved")


def test_an_empty_workflow_is_reported() -> None:
    assert contains(problems_of(Workflow("w")), "no tasks")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"on_failure": "explode"}, "on_failure"),
    ],
)
def test_bad_task_options_are_reported(options: dict[str, Any], fragment: str) -> None:
    wf = Workflow("w")
    wf.task("t", "app.x", **options)
    assert contains(problems_of(wf), "'t'", fragment)


def test_block_is_a_valid_on_failure() -> None:
    wf = Workflow("w")
    wf.task("t", "app.x", on_failure="block")
    assert DependencyResolver(wf).problems() == []


@pytest.mark.parametrize("on_failure", ["block", "skip", "alternative:fallback"])
def test_the_failure_strategies_are_valid(on_failure: str) -> None:
    wf = Workflow("w")
    wf.task("fallback", "app.fallback")
    wf.task("t", "app.x", on_failure=on_failure)
    wf.task("after", "app.x", params={"v": "${t.result}"})
    assert DependencyResolver(wf).problems() == []


def test_an_alternative_stands_in_for_its_task() -> None:
    wf = Workflow("w")
    wf.task("fetch", "app.fetch", on_failure="alternative:cached")
    wf.task("cached", "app.cached")
    wf.task("use", "app.use", params={"v": "${fetch.result}"})
    resolver = DependencyResolver(wf)
    assert resolver.stands_in_for == {"cached": "fetch"}
    order = resolver.order()
    assert order.index("fetch") < order.index("cached") < order.index("use")
    # it runs only in fetch's place: it is not a root, and use waits for fetch only
    assert resolver.parents("use") == ["fetch"]


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda wf: wf.task("a", "app.x", on_failure="alternative:nope"), ["unknown task 'nope'"]),
        (lambda wf: wf.task("a", "app.x", on_failure="alternative:a"), ["the task itself"]),
        (lambda wf: wf.task("a", "app.x", on_failure="alternative:"), ["is not one of"]),
    ],
)
def test_an_alternative_must_name_another_task(build: Any, fragments: list[str]) -> None:
    wf = Workflow("w")
    build(wf)
    assert contains(problems_of(wf), "'a'", *fragments)


def test_an_alternative_stands_in_for_one_task_only() -> None:
    wf = Workflow("w")
    wf.task("a", "app.x", on_failure="alternative:z")
    wf.task("b", "app.x", on_failure="alternative:z")
    wf.task("z", "app.x")
    assert contains(problems_of(wf), "'b'", "already the alternative of 'a'")


def test_alternatives_do_not_chain() -> None:
    wf = Workflow("w")
    wf.task("a", "app.x", on_failure="alternative:b")
    wf.task("b", "app.x", on_failure="alternative:c")
    wf.task("c", "app.x")
    assert contains(problems_of(wf), "'a'", "'b' has an alternative of its own")


def test_an_alternative_that_depends_on_its_task_is_refused() -> None:
    wf = Workflow("w")
    wf.task("a", "app.x", on_failure="alternative:b")
    wf.task("b", "app.x", params={"v": "${a.result}"})
    assert contains(problems_of(wf), "'b' depends on 'a'", "never run in its place")


def test_nothing_may_depend_on_an_alternative_directly() -> None:
    wf = Workflow("w")
    wf.task("a", "app.x", on_failure="alternative:b")
    wf.task("b", "app.x")
    wf.task("c", "app.x", params={"v": "${b.result}"})
    assert contains(problems_of(wf), "['c'] depend on the alternative 'b'", "depend on 'a'")


def test_alternatives_that_close_a_cycle_are_named_as_a_path() -> None:
    # ca reads a's result, which is b's when b stands in, and y needs ca; cx likewise
    # reads y's through x, and b needs cx: if a and x both fail, nothing could run
    wf = Workflow("w")
    wf.task("a", "app.x", on_failure="alternative:b")
    wf.task("x", "app.x", on_failure="alternative:y")
    wf.task("ca", "app.x", params={"v": "${a.result}"})
    wf.task("cx", "app.x", params={"v": "${x.result}"})
    wf.task("b", "app.x", depends_on=["cx"])
    wf.task("y", "app.x", depends_on=["ca"])
    assert contains(problems_of(wf), "cycle through an alternative: b -> ca -> y -> cx -> b")


def test_a_compensation_receives_the_result_so_no_param_may_take_its_name() -> None:
    wf = Workflow("w")
    wf.task("pay", "app.pay", params={"result": 1}, compensate="app.refund")
    assert contains(problems_of(wf), "'pay'", "param 'result'", "compensation")


def test_an_unregistered_compensation_is_reported_with_the_registry() -> None:
    wf = Workflow("w")
    wf.task("pay", "app.pay", compensate="app.refund")
    assert DependencyResolver(wf).problems(registered=["app.pay", "app.refund"]) == []
    assert contains(
        problems_of(wf, registered=["app.pay"]), "'pay'", "'app.refund'", "not a registered"
    )


# -- inputs and registered names -------------------------------------------------------


def test_missing_inputs_are_reported_only_when_inputs_are_given() -> None:
    wf = Workflow("w")
    wf.task("a", "app.x", params={"d": "${inputs.day}", "m": "$<inputs.month.name>"})
    wf.task("b", "app.x", params={"d": "on ${inputs.day}"})
    wf.validate()
    problems = problems_of(wf, inputs={"month": {"name": "nov"}})
    assert len(problems) == 1
    assert contains(problems, "'day'", "['a', 'b']", "not given")
    assert len(problems_of(wf, inputs={})) == 2
    wf.validate(inputs={"day": "x", "month": {}})


def test_unknown_task_names_are_reported_when_registered_is_given() -> None:
    wf = Workflow("w")
    wf.task("a", "app.known")
    wf.task("b", "app.unknown")
    wf.validate()
    problems = problems_of(wf, registered=["app.known"])
    assert problems == ["task 'b': no Celery task named 'app.unknown' is registered"]


def test_input_and_registry_problems_join_the_graph_problems() -> None:
    wf = Workflow("w")
    wf.task("a", "app.unknown", params={"d": "${inputs.day}", "g": "${ghost.result}"})
    problems = problems_of(wf, inputs={}, registered=[])
    assert len(problems) == 3
    assert contains(problems, "'ghost'")
    assert contains(problems, "'day'", "not given")
    assert contains(problems, "'app.unknown'")


# -- scale -----------------------------------------------------------------------------


def test_a_ten_thousand_task_chain_validates() -> None:
    wf = chain(10_000)
    resolver = DependencyResolver(wf)
    resolver.validate(inputs={"day": "d"})
    assert resolver.order() == [f"t{i}" for i in range(10_000)]
    assert resolver.roots() == ["t0"]


def test_a_ten_thousand_task_random_dag_validates() -> None:
    rng = random.Random(20261121)
    wf = Workflow("random-dag")
    wf.task("t0", "app.step")
    for i in range(1, 10_000):
        parents = rng.sample(range(i), k=min(2, i))
        wf.task(
            f"t{i}",
            "app.step",
            params={"from": f"${{t{parents[0]}.result}}"},
            depends_on=[f"t{p}" for p in parents[1:]],
        )
    resolver = DependencyResolver(wf)
    resolver.validate(inputs={}, registered=["app.step"])
    assert resolver.graph.number_of_nodes() == 10_000
    assert resolver.graph.number_of_edges() == 2 * 10_000 - 3
    assert_topological(resolver, wf)


def test_a_cycle_closing_a_ten_thousand_task_chain_is_found() -> None:
    wf = chain(10_000)
    wf.specs[0] = TaskSpec(id="t0", name="app.step", params={"p": "${t9999.result}"})
    problems = problems_of(wf)
    assert len(problems) == 1
    assert problems[0].startswith("cycle: t0 -> t1 -> t2 -> ")
    assert problems[0].endswith(" -> t9999 -> t0")
