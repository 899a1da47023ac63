"""What happens when tasks fail: a saga's compensations and workflow-level retries.

Pure functions from a run's stored tasks to decisions (which compensations run, in which
order; which tasks a retry runs again and what each then waits for). The store reads the
rows, asks these functions, and applies the answer in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gleitzeit.errors import RunControlError
from gleitzeit.states import FINAL_TASK_STATES, TaskState
from gleitzeit.workflow import ON_FAILURE_BLOCK, alternative_of

#: a compensation is a task of its run, named after the task it undoes
COMPENSATION_SUFFIX = ":compensate"
#: the parameter by which a compensation receives the result of the task it undoes
COMPENSATION_RESULT = "result"

FROM_FAILURE = "from_failure"
FROM_START = "from_start"
SKIP_FAILED = "skip_failed"
RETRY_STRATEGIES = (FROM_FAILURE, FROM_START, SKIP_FAILED)


def compensation_id(task_id: str) -> str:
    """The id of the task that compensates ``task_id`` (``:`` is not allowed in task ids)."""
    return f"{task_id}{COMPENSATION_SUFFIX}"


@dataclass(frozen=True)
class TaskView:
    """What the strategies need to know of one stored task."""

    task_id: str
    state: TaskState
    children: tuple[str, ...] = ()
    on_failure: str = ON_FAILURE_BLOCK
    #: the Celery task that undoes this one, if any
    compensate: str | None = None
    #: for an alternative: the task it stands in for
    stands_in_for: str | None = None
    #: for a compensation: the task it undoes
    compensates: str | None = None
    #: an error is recorded (a skipped task with one was skipped by its failure)
    has_error: bool = False
    finished_at: float | None = None


def compensation_order(tasks: Iterable[TaskView]) -> list[str]:
    """Succeeded tasks whose compensation has not been made yet, the latest finished first."""
    found = list(tasks)
    made = {view.compensates for view in found if view.compensates}
    due = [
        view
        for view in found
        if view.state is TaskState.SUCCEEDED and view.compensate and view.task_id not in made
    ]
    due.sort(key=lambda view: (view.finished_at or 0.0, view.task_id), reverse=True)
    return [view.task_id for view in due]


@dataclass(frozen=True)
class RetryPlan:
    """What a workflow retry changes: tasks to run again, failed ones to skip, rows to drop."""

    #: task id -> how many of its parents it waits for (it is claimed at 0)
    rerun: dict[str, int]
    #: failed tasks marked skipped ("skip_failed"): their dependents run and read ``None``
    skip: frozenset[str]
    #: compensation rows of an earlier failure, removed by a retry "from_start"
    drop: frozenset[str]


def plan_retry(
    tasks: Mapping[str, TaskView], strategy: str, *, changed: Iterable[str] = ()
) -> RetryPlan:
    """The plan of retrying an ended run with ``strategy``.

    ``changed``: tasks whose definition or inputs changed; they run again whatever the
    strategy, with everything that depends on them.
    """
    if strategy not in RETRY_STRATEGIES:
        raise RunControlError(
            f"unknown retry strategy {strategy!r}; choose from {list(RETRY_STRATEGIES)}"
        )
    regular = {tid: view for tid, view in tasks.items() if not view.compensates}
    drop = frozenset(tid for tid, view in tasks.items() if view.compensates)
    if drop and strategy != FROM_START:
        raise RunControlError(
            "the compensations of this run have run, so what its tasks did was undone; "
            f"retry it with strategy {FROM_START!r}"
        )
    skip: set[str] = set()
    if strategy == FROM_START:
        seeds = set(regular)
    elif strategy == FROM_FAILURE:
        seeds = {tid for tid, view in regular.items() if _failed_or_left(view)}
    else:
        skip = {tid for tid, view in regular.items() if view.state is TaskState.FAILED}
        seeds = {tid for tid, view in regular.items() if _failed_or_left(view)} - skip
    seeds |= set(changed) & set(regular)
    rerun = _with_alternatives(regular, _downstream(regular, seeds))
    skip -= rerun
    if not rerun and not skip:
        raise RunControlError(
            "nothing to retry: no task failed, was blocked or cancelled, and none changed"
        )
    parents = _parents(regular)
    return RetryPlan(
        rerun={
            tid: sum(1 for parent in parents.get(tid, ()) if parent in rerun)
            # an alternative also waits for the failure of the task it stands in for
            + (1 if regular[tid].stands_in_for else 0)
            for tid in sorted(rerun)
        },
        skip=frozenset(skip),
        drop=drop,
    )


def _failed_or_left(view: TaskView) -> bool:
    """Failed, blocked, cancelled, skipped by its failure, or never finished."""
    if view.state in (TaskState.FAILED, TaskState.BLOCKED, TaskState.CANCELLED):
        return True
    if view.state is TaskState.SKIPPED:
        return view.has_error
    return view.state not in FINAL_TASK_STATES


def _downstream(tasks: Mapping[str, TaskView], seeds: set[str]) -> set[str]:
    found = set(seeds)
    frontier = list(seeds)
    while frontier:
        for child in tasks[frontier.pop()].children:
            if child in tasks and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _with_alternatives(tasks: Mapping[str, TaskView], rerun: set[str]) -> set[str]:
    """An alternative runs again exactly when the task it stands in for does."""
    found = set(rerun)
    for tid in rerun:
        alternative = alternative_of(tasks[tid].on_failure)
        if alternative and alternative in tasks:
            found.add(alternative)
    return {
        tid
        for tid in found
        if tasks[tid].stands_in_for is None or tasks[tid].stands_in_for in found
    }


def _parents(tasks: Mapping[str, TaskView]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for tid, view in tasks.items():
        # an alternative's children are its task's, listed so that its result reaches them
        if view.stands_in_for is None:
            for child in view.children:
                found.setdefault(child, []).append(tid)
    return found
