"""The pure decisions of sagas and workflow retries."""

from __future__ import annotations

import pytest

from gleitzeit import RunControlError, TaskState
from gleitzeit.strategies import TaskView, compensation_order, plan_retry

S, F, B, K, C, P = (
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.BLOCKED,
    TaskState.SKIPPED,
    TaskState.CANCELLED,
    TaskState.PENDING,
)


def views(*found: TaskView) -> dict[str, TaskView]:
    return {view.task_id: view for view in found}


def test_compensations_run_latest_finished_first_and_only_once() -> None:
    found = [
        TaskView("a", S, compensate="undo", finished_at=1.0),
        TaskView("b", S, compensate="undo", finished_at=3.0),
        TaskView("c", S, finished_at=4.0),  # nothing to undo it
        TaskView("d", F, compensate="undo", finished_at=5.0),  # it did not succeed
        TaskView("e", S, compensate="undo", finished_at=2.0),
    ]
    assert compensation_order(found) == ["b", "e", "a"]
    made = [*found, TaskView("b:compensate", S, compensates="b")]
    assert compensation_order(made) == ["e", "a"]


def chain_with_branch() -> dict[str, TaskView]:
    # a -> b -> c, a -> other; b failed, c blocked
    return views(
        TaskView("a", S, children=("b", "other")),
        TaskView("b", F, children=("c",)),
        TaskView("c", B),
        TaskView("other", S),
    )


def test_from_failure_reruns_the_failed_task_and_what_depends_on_it() -> None:
    plan = plan_retry(chain_with_branch(), "from_failure")
    assert plan.rerun == {"b": 0, "c": 1}
    assert plan.skip == frozenset() and plan.drop == frozenset()


def test_from_start_reruns_everything_waiting_as_at_submit() -> None:
    plan = plan_retry(chain_with_branch(), "from_start")
    assert plan.rerun == {"a": 0, "b": 1, "c": 1, "other": 1}


def test_skip_failed_skips_the_failure_and_runs_what_it_blocked() -> None:
    plan = plan_retry(chain_with_branch(), "skip_failed")
    assert plan.skip == frozenset({"b"})
    assert plan.rerun == {"c": 0}


def test_a_changed_task_reruns_with_its_dependents_whatever_the_strategy() -> None:
    plan = plan_retry(chain_with_branch(), "skip_failed", changed=["a"])
    assert plan.rerun == {"a": 0, "b": 1, "c": 1, "other": 1}
    assert plan.skip == frozenset()  # b runs again instead of being skipped


def test_a_task_skipped_by_its_failure_reruns_and_one_skipped_as_unneeded_does_not() -> None:
    found = views(
        TaskView("live", K, children=("use",), on_failure="alternative:cached", has_error=True),
        TaskView("cached", S, children=("use",), stands_in_for="live"),
        TaskView("use", S),
    )
    plan = plan_retry(found, "from_failure")
    # the alternative goes back on standby: its own parents (none) + the failure of live
    assert plan.rerun == {"cached": 1, "live": 0, "use": 1}

    unneeded = views(
        TaskView("live", S, children=("use",), on_failure="alternative:cached"),
        TaskView("cached", K, children=("use",), stands_in_for="live"),
        TaskView("use", F),
    )
    assert plan_retry(unneeded, "from_failure").rerun == {"use": 0}


def test_a_cancelled_run_reruns_what_was_cancelled() -> None:
    found = views(TaskView("a", S, children=("b",)), TaskView("b", C), TaskView("c", C))
    assert plan_retry(found, "from_failure").rerun == {"b": 0, "c": 0}


@pytest.mark.parametrize(
    ("found", "strategy", "message"),
    [
        (views(TaskView("a", S)), "from_failure", "nothing to retry"),
        (views(TaskView("a", S)), "sideways", "unknown retry strategy 'sideways'"),
        (
            views(TaskView("a", S, compensate="u"), TaskView("a:compensate", S, compensates="a")),
            "from_failure",
            "use 'from_start'|retry it with strategy 'from_start'",
        ),
    ],
)
def test_retries_that_cannot_be_made_are_refused(
    found: dict[str, TaskView], strategy: str, message: str
) -> None:
    with pytest.raises(RunControlError, match=message):
        plan_retry(found, strategy)


def test_from_start_after_a_saga_drops_the_compensations() -> None:
    found = views(
        TaskView("a", S, compensate="u"),
        TaskView("b", F),
        TaskView("a:compensate", S, compensates="a"),
    )
    plan = plan_retry(found, "from_start")
    assert plan.drop == frozenset({"a:compensate"}) and set(plan.rerun) == {"a", "b"}


def test_an_unfinished_task_counts_as_left_over() -> None:
    found = views(TaskView("a", S, children=("b",)), TaskView("b", P))
    assert plan_retry(found, "from_failure").rerun == {"b": 0}
