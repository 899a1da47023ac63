"""Run and task states: the transition tables, and the one check every write goes through."""

from __future__ import annotations

import itertools

import pytest

from gleitzeit.errors import GleitzeitError, InvalidTransition
from gleitzeit.states import (
    FINAL_RUN_STATES,
    FINAL_TASK_STATES,
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    RunState,
    TaskState,
    check_run_transition,
    check_task_transition,
    run_sources,
    task_moves,
    task_sources,
)

R = RunState
T = TaskState


def test_the_state_names_are_the_spec_names() -> None:
    assert [s.value for s in RunState] == [
        "pending",
        "running",
        "paused",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert [s.value for s in TaskState] == [
        "pending",
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "skipped",
        "blocked",
        "cancelled",
    ]
    assert str(RunState.RUNNING) == "running"
    assert str(TaskState.BLOCKED) == "blocked"
    assert RunState("paused") is RunState.PAUSED
    assert TaskState.SUCCEEDED == "succeeded"


def test_final_states() -> None:
    assert {s.value for s in FINAL_RUN_STATES} == {"succeeded", "failed", "cancelled"}
    assert {s.value for s in FINAL_TASK_STATES} == {
        "succeeded",
        "failed",
        "skipped",
        "blocked",
        "cancelled",
    }


@pytest.mark.parametrize(("old", "new"), sorted(RUN_TRANSITIONS))
def test_every_listed_run_transition_is_allowed(old: RunState, new: RunState) -> None:
    check_run_transition(old, new)


@pytest.mark.parametrize(("old", "new"), sorted(TASK_TRANSITIONS))
def test_every_listed_task_transition_is_allowed(old: TaskState, new: TaskState) -> None:
    check_task_transition(old, new)


RUN_FORBIDDEN = sorted(set(itertools.product(RunState, RunState)) - RUN_TRANSITIONS)
TASK_FORBIDDEN = sorted(set(itertools.product(TaskState, TaskState)) - TASK_TRANSITIONS)


@pytest.mark.parametrize(("old", "new"), RUN_FORBIDDEN)
def test_every_other_run_transition_raises(old: RunState, new: RunState) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_run_transition(old, new)
    assert str(caught.value) == f"run cannot go from {old.value!r} to {new.value!r}"
    assert isinstance(caught.value, GleitzeitError)


@pytest.mark.parametrize(("old", "new"), TASK_FORBIDDEN)
def test_every_other_task_transition_raises(old: TaskState, new: TaskState) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_task_transition(old, new)
    assert str(caught.value) == f"task cannot go from {old.value!r} to {new.value!r}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (T.SUCCEEDED, T.RUNNING),  # a duplicate delivery never reruns a finished task
        (T.SUCCEEDED, T.FAILED),  # a late failure never overwrites a success
        (T.FAILED, T.SUCCEEDED),  # a late success never overwrites a given-up attempt
        (T.PENDING, T.RUNNING),  # nothing runs without being claimed (queued)
        (T.PENDING, T.SUCCEEDED),
        (T.BLOCKED, T.QUEUED),
        (T.CANCELLED, T.QUEUED),
        (T.SKIPPED, T.QUEUED),
    ],
)
def test_guarantee_relevant_task_transitions_are_forbidden(old: TaskState, new: TaskState) -> None:
    assert (old, new) not in TASK_TRANSITIONS


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (R.SUCCEEDED, R.FAILED),  # a late failure never turns a finished run around
        (R.CANCELLED, R.SUCCEEDED),  # a cancelled run ends cancelled unless retried
        (R.FAILED, R.SUCCEEDED),
    ],
)
def test_guarantee_relevant_run_transitions_are_forbidden(old: RunState, new: RunState) -> None:
    assert (old, new) not in RUN_TRANSITIONS


def test_the_only_transition_to_itself_is_a_new_attempt_replacing_an_unstarted_one() -> None:
    assert all(old is not new for old, new in RUN_TRANSITIONS)
    assert [(o, n) for o, n in TASK_TRANSITIONS if o is n] == [(T.QUEUED, T.QUEUED)]


def test_task_moves_checks_each_source_against_the_table() -> None:
    assert task_moves(T.RETRYING, T.QUEUED, to=T.QUEUED) == ("queued", "retrying")
    with pytest.raises(InvalidTransition, match="'succeeded' to 'queued'"):
        task_moves(T.QUEUED, T.SUCCEEDED, to=T.QUEUED)


def test_a_final_task_state_is_never_overwritten_by_an_outcome() -> None:
    # Late or duplicate outcomes are ignored; only a workflow-level retry may reset a task
    # (to pending) or, with "skip_failed", skip a failed one.
    left = [(o, n) for o, n in TASK_TRANSITIONS if o in FINAL_TASK_STATES and n is not T.PENDING]
    assert left == [(T.FAILED, T.SKIPPED)]


def test_every_non_final_task_state_can_reach_a_final_state() -> None:
    for state in TaskState:
        if state in FINAL_TASK_STATES:
            continue
        assert any(o is state and n in FINAL_TASK_STATES for o, n in TASK_TRANSITIONS), state


def test_every_task_state_is_reachable_from_pending() -> None:
    reached = {T.PENDING}
    frontier = [T.PENDING]
    while frontier:
        state = frontier.pop()
        for old, new in TASK_TRANSITIONS:
            if old is state and new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(TaskState)


def test_every_run_state_is_reachable_from_pending() -> None:
    reached = {R.PENDING}
    frontier = [R.PENDING]
    while frontier:
        state = frontier.pop()
        for old, new in RUN_TRANSITIONS:
            if old is state and new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(RunState)


@pytest.mark.parametrize("new", list(TaskState))
def test_task_sources_are_the_table_read_backwards(new: TaskState) -> None:
    sources = task_sources(new)
    assert sources == tuple(sorted(o.value for o, n in TASK_TRANSITIONS if n is new))
    assert all(isinstance(s, str) for s in sources)


@pytest.mark.parametrize("new", list(RunState))
def test_run_sources_are_the_table_read_backwards(new: RunState) -> None:
    assert run_sources(new) == tuple(sorted(o.value for o, n in RUN_TRANSITIONS if n is new))


@pytest.mark.parametrize(
    ("new", "sources"),
    [
        (T.RUNNING, ("queued", "retrying")),
        (T.QUEUED, ("pending", "queued", "retrying")),
        (T.SUCCEEDED, ("running",)),
        (T.CANCELLED, ("pending", "queued", "retrying", "running")),
        (T.PENDING, ("blocked", "cancelled", "failed", "skipped", "succeeded")),
        (T.SKIPPED, ("failed", "pending", "queued", "retrying", "running")),
    ],
)
def test_task_sources_for_the_conditional_update(new: TaskState, sources: tuple[str, ...]) -> None:
    assert task_sources(new) == sources


@pytest.mark.parametrize(
    ("new", "sources"),
    [
        (R.RUNNING, ("cancelled", "failed", "paused", "pending", "succeeded")),
        (R.PAUSED, ("running",)),
        (R.CANCELLED, ("paused", "pending", "running")),
        (R.PENDING, ()),
    ],
)
def test_run_sources_for_the_conditional_update(new: RunState, sources: tuple[str, ...]) -> None:
    assert run_sources(new) == sources
