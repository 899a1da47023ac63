"""References: parsing, malformed spellings, and resolution against inputs and results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gleitzeit.errors import ReferenceResolutionError
from gleitzeit.refs import (
    MalformedReference,
    Reference,
    find_references,
    follow,
    format_reference,
    lookup_in,
    parse_template,
    resolve,
)

RESULTS: dict[str, Any] = {
    "extract": {"rows": [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}], "count": 2},
    "nothing": None,
    "number": 42,
    "listy": [1, 2, 3],
    "text": "hello",
}
INPUTS: dict[str, Any] = {"day": "2026-11-21", "limits": {"max": 5}, "days": ["mon", "tue"]}


def run(value: Any, inputs: dict[str, Any] | None = None) -> Any:
    return resolve(value, lookup_in(INPUTS if inputs is None else inputs, RESULTS))


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "source", "path"),
    [
        ("${extract.result}", "extract", ()),
        ("${extract.result.rows.0.id}", "extract", ("rows", "0", "id")),
        ("${extract.result.rows[0].id}", "extract", ("rows", 0, "id")),
        ("${extract.result[1]}", "extract", (1,)),
        ("${inputs.day}", "inputs", ("day",)),
        ("${inputs.limits.max}", "inputs", ("limits", "max")),
        ("$<extract.result>", "extract", ()),
        ("$<extract.result.rows[0].id>", "extract", ("rows", 0, "id")),
        ("$<inputs.day>", "inputs", ("day",)),
        ("${ extract.result }", "extract", ()),
        ("${my_task-2.result}", "my_task-2", ()),
    ],
)
def test_a_whole_reference_parses_to_source_and_path(
    text: str, source: str, path: tuple[Any, ...]
) -> None:
    whole = parse_template(text).whole
    assert whole == Reference(source, path, text)


def test_both_spellings_name_the_same_value() -> None:
    curly = parse_template("${extract.result.rows[0]}").whole
    angle = parse_template("$<extract.result.rows[0]>").whole
    assert curly is not None and angle is not None
    assert (curly.source, curly.path) == (angle.source, angle.path)


def test_a_reference_inside_text_splits_into_literals_and_references() -> None:
    template = parse_template("day ${inputs.day}: ${extract.result.count} rows")
    assert template.whole is None
    assert [p if isinstance(p, str) else p.text for p in template.parts] == [
        "day ",
        "${inputs.day}",
        ": ",
        "${extract.result.count}",
        " rows",
    ]
    assert [r.source for r in template.references] == ["inputs", "extract"]


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("$${extract.result}", "${extract.result}"),
        ("$$<extract.result>", "$<extract.result>"),
        ("cost: $${HOME} and $$<x>", "cost: ${HOME} and $<x>"),
        ("price $5, $$ and $", "price $5, $$ and $"),
        ("no references here", "no references here"),
    ],
)
def test_escapes_and_lone_dollars_are_literal(text: str, literal: str) -> None:
    template = parse_template(text)
    assert template.references == []
    assert "".join(p for p in template.parts if isinstance(p, str)) == literal


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("${extract.result", "unclosed"),
        ("$<extract.result", "unclosed"),
        ("prefix ${extract.result.rows", "unclosed"),
        ("${extract}", "extract.result"),
        ("${extract.rows}", "extract.result"),
        ("$<extract>", "extract.result"),
        ("${inputs}", "inputs.NAME"),
        ("${inputs[0]}", "inputs.NAME"),
        ("${}", "malformed"),
        ("${extract.result.}", "malformed"),
        ("${extract task.result}", "malformed"),
        ("${extract.result.a b}", "malformed"),
        ("${extract.result[a]}", "malformed"),
        ("${extract.result.rows[-1]}", "malformed"),
        ("${ex!tract.result}", "malformed"),
        ("${extract.result.ü}", "malformed"),
    ],
)
def test_malformed_references_are_rejected_naming_the_text(text: str, says: str) -> None:
    with pytest.raises(MalformedReference) as caught:
        parse_template(text)
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_find_references_reports_every_malformed_one_with_its_location() -> None:
    params = {
        "ok": "${a.result}",
        "nested": {"list": ["x", "${b}", {"deep": "${c.result"}]},
        "input": "$<inputs.day>",
        "number": 3,
    }
    refs, problems = find_references(params)
    assert sorted(r.source for r in refs) == ["a", "inputs"]
    assert len(problems) == 2
    assert problems[0].startswith("params.nested.list[1]: ")
    assert "'${b}'" in problems[0]
    assert problems[1].startswith("params.nested.list[2].deep: ")
    assert "unclosed" in problems[1]


def test_find_references_ignores_non_strings_and_plain_text() -> None:
    assert find_references({"a": 1, "b": None, "c": [True, 2.5], "d": "plain"}) == ([], [])


@pytest.mark.parametrize(
    ("source", "path", "text"),
    [
        ("t", (), "${t.result}"),
        ("t", ("rows", 0, "id"), "${t.result.rows[0].id}"),
        ("t", (3,), "${t.result[3]}"),
    ],
)
def test_format_reference_round_trips_through_the_parser(
    source: str, path: tuple[Any, ...], text: str
) -> None:
    assert format_reference(source, path) == text
    assert parse_template(text).whole == Reference(source, path, text)


# -- resolution ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("${extract.result}", RESULTS["extract"]),
        ("${extract.result.rows}", RESULTS["extract"]["rows"]),
        ("${extract.result.rows.0.id}", 7),
        ("${extract.result.rows[1].id}", 8),
        ("${extract.result.rows[0]}", {"id": 7, "name": "a"}),
        ("$<extract.result.rows.1.name>", "b"),
        ("${number.result}", 42),
        ("${listy.result}", [1, 2, 3]),
        ("${nothing.result}", None),
        ("${inputs.day}", "2026-11-21"),
        ("${inputs.limits.max}", 5),
        ("${inputs.days[1]}", "tue"),
    ],
)
def test_a_whole_value_reference_keeps_its_type(param: str, expected: Any) -> None:
    resolved = run({"p": param})["p"]
    assert resolved == expected
    assert type(resolved) is type(expected)


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("day=${inputs.day}", "day=2026-11-21"),
        ("say ${text.result}!", "say hello!"),
        ("n=${number.result}", "n=42"),
        ("v=${nothing.result}", "v=null"),
        ("rows: ${listy.result}", "rows: " + json.dumps([1, 2, 3])),
        ("first: $<extract.result.rows[0]>", "first: " + json.dumps({"id": 7, "name": "a"})),
        ("${inputs.day}/${extract.result.count}", "2026-11-21/2"),
        ("$${inputs.day} is ${inputs.day}", "${inputs.day} is 2026-11-21"),
        ("$$<inputs.day> is $<inputs.day>", "$<inputs.day> is 2026-11-21"),
    ],
)
def test_a_reference_inside_a_longer_string_is_rendered_into_it(param: str, expected: str) -> None:
    assert run(param) == expected


def test_an_escaped_reference_alone_is_a_literal_string() -> None:
    assert run("$${extract.result}") == "${extract.result}"
    assert run("$$<extract.result>") == "$<extract.result>"


def test_resolve_walks_nested_params_and_leaves_other_values_alone() -> None:
    params = {
        "rows": "${extract.result.rows}",
        "nested": {"ids": ["${extract.result.rows.0.id}", "${extract.result.rows.1.id}"]},
        "tuple": ("${number.result}",),
        "plain": "text",
        "flag": True,
        "none": None,
        "cash": "$5",
    }
    assert run(params) == {
        "rows": RESULTS["extract"]["rows"],
        "nested": {"ids": [7, 8]},
        "tuple": [42],
        "plain": "text",
        "flag": True,
        "none": None,
        "cash": "$5",
    }


def test_resolve_does_not_modify_its_input() -> None:
    params = {"rows": ["${number.result}"]}
    run(params)
    assert params == {"rows": ["${number.result}"]}


@pytest.mark.parametrize(
    ("param", "named"),
    [
        ("${extract.result.rows.5.id}", "${extract.result.rows.5.id}"),
        ("${extract.result.missing}", "${extract.result.missing}"),
        ("${extract.result.count.deeper}", "${extract.result.count.deeper}"),
        ("${extract.result.rows.x}", "${extract.result.rows.x}"),
        ("${nothing.result.key}", "${nothing.result.key}"),
        ("${text.result.0}", "${text.result.0}"),
        ("${ghost.result}", "ghost"),
        ("${inputs.month}", "month"),
        ("${inputs.limits.min}", "${inputs.limits.min}"),
        ("in text ${extract.result.nope} too", "${extract.result.nope}"),
        ("$<extract.result.nope>", "$<extract.result.nope>"),
    ],
)
def test_a_path_missing_at_run_time_raises_naming_the_reference(param: str, named: str) -> None:
    with pytest.raises(ReferenceResolutionError) as caught:
        run({"p": param})
    message = str(caught.value)
    assert named in message
    assert "reference" in message


def test_follow_names_the_missing_step_and_where_it_looked() -> None:
    ref = parse_template("${extract.result.rows[9]}").whole
    assert ref is not None
    with pytest.raises(ReferenceResolutionError) as caught:
        follow(RESULTS["extract"], ref)
    assert "9" in str(caught.value)
    assert "rows" in str(caught.value)


def test_a_skipped_task_yields_none_through_its_reference() -> None:
    # A skipped task's stored result is None: the whole reference yields None.
    assert resolve("${skipped.result}", lookup_in({}, {"skipped": None})) is None


def test_lookup_can_be_any_callable() -> None:
    seen: list[str] = []

    def lookup(ref: Reference) -> Any:
        seen.append(ref.text)
        return ref.source.upper()

    assert resolve(["${a.result}", "x ${b.result.k} y"], lookup) == ["A", "x B y"]
    assert seen == ["${a.result}", "${b.result.k}"]
