"""JSON in and out of the store: what a result may be, and how it fails when it may not."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from gleitzeit.codec import DEFAULT_RESULT_LIMIT, dumps, encode_result, loads
from gleitzeit.errors import GleitzeitError, ResultError


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -3,
        2.5,
        True,
        "text",
        "ünïcödé ✓",
        [],
        {},
        [1, "a", None, {"k": [True, 1.5]}],
        {"rows": [{"id": 1}, {"id": 2}], "count": 2},
    ],
)
def test_json_results_round_trip(value: Any) -> None:
    text = encode_result(value, task_id="t")
    assert loads(text) == value
    assert type(loads(text)) is type(value)


def test_dumps_is_compact() -> None:
    assert dumps({"a": [1, 2], "b": None}) == '{"a":[1,2],"b":null}'


def test_loads_of_nothing_is_none() -> None:
    assert loads(None) is None
    assert loads("null") is None


def test_a_tuple_result_is_stored_as_a_list() -> None:
    assert loads(encode_result((1, 2), task_id="t")) == [1, 2]


class Custom:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        (Custom(), "Custom"),
        (datetime.date(2026, 11, 21), "date"),
        ({"nested": [object()]}, "dict"),
        ({("a", "b"): 1}, "dict"),
    ],
)
def test_a_result_that_is_not_json_fails_with_a_clear_error(value: Any, type_name: str) -> None:
    with pytest.raises(ResultError) as caught:
        encode_result(value, task_id="extract")
    message = str(caught.value)
    assert "'extract'" in message
    assert "not JSON" in message
    assert type_name in message
    assert isinstance(caught.value, GleitzeitError)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), {"score": float("nan")}, [1.0, float("inf")]],
)
def test_nan_and_infinity_are_not_json(value: Any) -> None:
    with pytest.raises(ResultError, match="not JSON"):
        encode_result(value, task_id="t")


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps(float("nan"))


def test_the_default_limit_is_one_mebibyte() -> None:
    assert DEFAULT_RESULT_LIMIT == 1024 * 1024


def sized(n_bytes: int) -> str:
    """A string value whose JSON encoding is exactly ``n_bytes`` bytes."""
    return "x" * (n_bytes - 2)


def test_a_result_exactly_at_the_limit_is_stored() -> None:
    text = encode_result(sized(DEFAULT_RESULT_LIMIT), task_id="t")
    assert len(text.encode()) == DEFAULT_RESULT_LIMIT


def test_a_result_over_the_limit_fails_naming_its_size_and_the_limit() -> None:
    with pytest.raises(ResultError) as caught:
        encode_result(sized(DEFAULT_RESULT_LIMIT + 1), task_id="big")
    message = str(caught.value)
    assert "'big'" in message
    assert str(DEFAULT_RESULT_LIMIT + 1) in message
    assert str(DEFAULT_RESULT_LIMIT) in message


@pytest.mark.parametrize(
    ("value", "limit", "fits"),
    [
        ("abc", 5, True),
        ("abcd", 5, False),
        ("é", 8, True),  # stored as "\\u00e9": the limit counts the stored bytes
        ("é", 7, False),
        ([1, 2, 3], 7, True),
        ([1, 2, 3], 6, False),
    ],
)
def test_the_limit_counts_encoded_bytes(value: Any, limit: int, fits: bool) -> None:
    if fits:
        assert json.loads(encode_result(value, task_id="t", limit=limit)) == value
    else:
        with pytest.raises(ResultError, match="over the limit"):
            encode_result(value, task_id="t", limit=limit)
