"""The exception tree: every class exported from ``gleitzeit`` and named ``gleitzeit.X``."""

from __future__ import annotations

import inspect

import pytest

import gleitzeit
from gleitzeit import errors
from gleitzeit.errors import (
    GleitzeitError,
    IdempotencyConflict,
    ResultError,
    ScheduleConflict,
    WorkerLost,
)
from gleitzeit.policy import exception_names, type_name

ERROR_CLASSES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, GleitzeitError) and cls.__module__ == errors.__name__
    ),
    key=lambda cls: cls.__name__,
)


def test_the_tree_is_found() -> None:
    assert {GleitzeitError, ResultError, WorkerLost} <= set(ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_exception_is_exported_from_the_package(cls: type[GleitzeitError]) -> None:
    assert cls.__name__ in gleitzeit.__all__
    assert getattr(gleitzeit, cls.__name__) is cls


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_exception_is_named_as_the_package_exports_it(cls: type[GleitzeitError]) -> None:
    name = f"gleitzeit.{cls.__name__}"
    assert type_name(cls) == name
    raised = cls.__new__(cls)  # what is matched is the class, whatever its arguments
    # retry_on may name it either way
    assert {name, f"gleitzeit.errors.{cls.__name__}"} <= exception_names(raised)


@pytest.mark.parametrize(
    ("differs", "says"),
    [
        (["graph"], "with a different graph"),
        (["inputs"], "with different inputs"),
        (["graph", "inputs"], "with a different graph and different inputs"),
    ],
)
def test_an_idempotency_conflict_says_what_differs_in_english(
    differs: list[str], says: str
) -> None:
    conflict = IdempotencyConflict("day/1", "r-1", differs)

    assert str(conflict) == f"key 'day/1' already names run r-1, {says}"
    assert conflict.differs == differs


@pytest.mark.parametrize(
    ("differs", "says"),
    [
        (["inputs"], "its inputs differ"),
        (["cron expression"], "its cron expression differs"),
        (["time zone", "workflow", "catchup"], "its time zone, workflow and catchup differ"),
    ],
)
def test_a_schedule_conflict_says_what_differs_in_english(differs: list[str], says: str) -> None:
    conflict = ScheduleConflict("nightly", differs)

    assert str(conflict) == (
        f"schedule 'nightly' exists, defined otherwise: {says}; remove it first to change it"
    )
