"""Retry policy: backoff bounds with jitter and cap, and which errors are retried."""

from __future__ import annotations

import random
from dataclasses import fields

import pytest

from gleitzeit.policy import Backoff, compute_backoff, exception_names, should_retry, type_name


class TransientError(ConnectionError):
    """A user's exception, subclassing a builtin one."""


class Outer:
    class NestedError(Exception):
        """Named by its qualified name."""


@pytest.mark.parametrize(
    ("failed", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 256.0), (10, 300.0), (50, 300.0)],
)
def test_backoff_without_jitter_doubles_up_to_the_cap(failed: int, expected: float) -> None:
    assert compute_backoff(failed, Backoff(jitter=False)) == expected


@pytest.mark.parametrize(
    ("backoff", "failed", "expected"),
    [
        (Backoff(base=0.5, factor=3, cap=100, jitter=False), 1, 0.5),
        (Backoff(base=0.5, factor=3, cap=100, jitter=False), 3, 4.5),
        (Backoff(base=0.5, factor=3, cap=100, jitter=False), 10, 100),
        (Backoff(base=10, factor=1, cap=100, jitter=False), 7, 10),
        (Backoff(base=0, jitter=True), 5, 0.0),
        (Backoff(base=5, cap=2, jitter=False), 1, 2),
    ],
)
def test_backoff_follows_base_factor_and_cap(
    backoff: Backoff, failed: int, expected: float
) -> None:
    assert compute_backoff(failed, backoff) == pytest.approx(expected)


@pytest.mark.parametrize("failed", [0, -3])
def test_backoff_before_any_failure_is_the_base(failed: int) -> None:
    assert compute_backoff(failed, Backoff(base=3, jitter=False)) == 3


@pytest.mark.parametrize("failed", [1, 2, 5, 9, 10, 30])
def test_jittered_backoff_stays_within_half_and_full_delay(failed: int) -> None:
    backoff = Backoff(base=1, factor=2, cap=300, jitter=True)
    full = compute_backoff(failed, Backoff(base=1, factor=2, cap=300, jitter=False))
    rng = random.Random(failed)
    draws = [compute_backoff(failed, backoff, rng=rng) for _ in range(500)]
    assert all(full / 2 <= d <= full for d in draws)
    assert all(d <= backoff.cap for d in draws)
    # jitter spreads retries: the draws are not all the same
    assert len(set(draws)) > 100
    assert min(draws) < full * 0.6
    assert max(draws) > full * 0.9


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    backoff = Backoff()
    first = [compute_backoff(3, backoff, rng=random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_a_huge_attempt_count_is_capped_not_an_overflow() -> None:
    assert compute_backoff(100_000, Backoff(jitter=False)) == 300.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, Backoff()),
        (Backoff(base=3, jitter=False), Backoff(base=3, jitter=False)),
        (4, Backoff(base=4.0)),
        (0.25, Backoff(base=0.25)),
        ({"base": 2, "cap": 9}, Backoff(base=2, cap=9)),
        ({}, Backoff()),
    ],
)
def test_backoff_coerce_accepts_the_documented_forms(value: object, expected: Backoff) -> None:
    assert Backoff.coerce(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "fragment"), [(True, "True"), ({"base": 1, "slow": 2}, "slow")])
def test_backoff_coerce_rejects_bad_forms_naming_them(value: object, fragment: str) -> None:
    with pytest.raises(TypeError, match=fragment):
        Backoff.coerce(value)  # type: ignore[arg-type]


def test_backoff_to_dict_round_trips() -> None:
    backoff = Backoff(base=0.5, factor=3.0, cap=10.0, jitter=False)
    assert backoff.to_dict() == {"base": 0.5, "factor": 3.0, "cap": 10.0, "jitter": False}
    assert Backoff.coerce(backoff.to_dict()) == backoff
    assert set(backoff.to_dict()) == {field.name for field in fields(Backoff)}  # none left out


# -- which errors are retried ----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc_type", "name"),
    [
        (ValueError, "ValueError"),
        (ConnectionError, "ConnectionError"),
        (TransientError, f"{__name__}.TransientError"),
        (Outer.NestedError, f"{__name__}.Outer.NestedError"),
    ],
)
def test_type_name_is_how_retry_on_names_an_exception(
    exc_type: type[BaseException], name: str
) -> None:
    assert type_name(exc_type) == name
    assert name in exception_names(exc_type())


def test_an_exception_answers_to_its_base_classes() -> None:
    names = exception_names(TransientError())
    assert {"TransientError", "ConnectionError", "OSError", "Exception"} <= names
    assert f"{__name__}.TransientError" in names
    assert "builtins.ConnectionError" in names


@pytest.mark.parametrize(
    ("exc", "attempt", "retries", "retry_on", "expected"),
    [
        # an empty retry_on retries every Exception while attempts remain
        (ValueError("x"), 1, 3, [], True),
        (ValueError("x"), 3, 3, [], True),
        (ValueError("x"), 4, 3, [], False),
        (ValueError("x"), 1, 0, [], False),
        (KeyboardInterrupt(), 1, 3, [], False),
        # retry_on by simple name, qualified name, or base class name
        (ConnectionError("x"), 1, 3, ["ConnectionError"], True),
        (TransientError("x"), 1, 3, ["ConnectionError"], True),
        (TransientError("x"), 1, 3, ["OSError"], True),
        (TransientError("x"), 1, 3, [f"{__name__}.TransientError"], True),
        (TransientError("x"), 1, 3, ["TransientError"], True),
        (Outer.NestedError("x"), 1, 3, [f"{__name__}.Outer.NestedError"], True),
        (Outer.NestedError("x"), 1, 3, ["NestedError"], True),
        (ValueError("x"), 1, 3, ["ConnectionError", "ValueError"], True),
        # other errors are not retried
        (ValueError("x"), 1, 3, ["ConnectionError"], False),
        (ConnectionError("x"), 1, 3, [f"{__name__}.TransientError"], False),
        (ValueError("x"), 1, 3, ["other.module.ValueError"], False),
        # retry_on never outlives the retries
        (ConnectionError("x"), 4, 3, ["ConnectionError"], False),
    ],
)
def test_should_retry(
    exc: BaseException, attempt: int, retries: int, retry_on: list[str], expected: bool
) -> None:
    assert should_retry(exc, attempt=attempt, retries=retries, retry_on=retry_on) is expected


def test_retry_on_may_be_any_iterable() -> None:
    names = (n for n in ["KeyError"])
    assert should_retry(KeyError("k"), attempt=1, retries=1, retry_on=names) is True
