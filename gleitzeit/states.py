"""Run and task states, and the transitions between them, as data.

Every state write in the store is a conditional ``UPDATE ... WHERE state IN (...)``
whose expected states come from these tables, so a transition that is not listed
here cannot happen, whatever races.
"""

from __future__ import annotations

from enum import Enum

from gleitzeit.errors import InvalidTransition


class RunState(str, Enum):
    #: stored, nothing dispatched yet
    PENDING = "pending"
    #: at least one task has been dispatched and the run has not ended
    RUNNING = "running"
    #: no new dispatches; running tasks finish
    PAUSED = "paused"
    #: every task succeeded (or was skipped by its ``on_failure``)
    SUCCEEDED = "succeeded"
    #: a task failed and nothing more can run
    FAILED = "failed"
    #: cancelled by a user
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class TaskState(str, Enum):
    #: waiting for its parents
    PENDING = "pending"
    #: claimed for an attempt; its message is published (or about to be)
    QUEUED = "queued"
    #: a worker runs the attempt
    RUNNING = "running"
    #: an attempt failed; the next attempt is published with a countdown
    RETRYING = "retrying"
    #: the body returned a result, which is stored
    SUCCEEDED = "succeeded"
    #: the last attempt failed
    FAILED = "failed"
    #: failed, and its ``on_failure`` ("skip", "alternative:...") let the run go on, its
    #: error kept; or an alternative that was not needed. Dependents read ``None`` from it
    #: (or, when an alternative stood in, the alternative's result)
    SKIPPED = "skipped"
    #: will not run because a task it depends on failed
    BLOCKED = "blocked"
    #: will not run because its run was cancelled
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


FINAL_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})

FINAL_TASK_STATES = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.SKIPPED,
        TaskState.BLOCKED,
        TaskState.CANCELLED,
    }
)

RUN_TRANSITIONS: frozenset[tuple[RunState, RunState]] = frozenset(
    {
        # the first dispatch is committed with the run itself
        (RunState.PENDING, RunState.RUNNING),
        # every task reached a final state
        (RunState.RUNNING, RunState.SUCCEEDED),
        (RunState.RUNNING, RunState.FAILED),
        # a run with no runnable task (all roots blocked) ends without running
        (RunState.PENDING, RunState.FAILED),
        # user control
        (RunState.PENDING, RunState.CANCELLED),
        (RunState.RUNNING, RunState.CANCELLED),
        (RunState.PAUSED, RunState.CANCELLED),
        (RunState.RUNNING, RunState.PAUSED),
        (RunState.PAUSED, RunState.RUNNING),
        # tasks that were running while paused may end the run
        (RunState.PAUSED, RunState.SUCCEEDED),
        (RunState.PAUSED, RunState.FAILED),
        # workflow-level retry reopens an ended run (a succeeded one from the start or
        # with new inputs)
        (RunState.FAILED, RunState.RUNNING),
        (RunState.CANCELLED, RunState.RUNNING),
        (RunState.SUCCEEDED, RunState.RUNNING),
    }
)

TASK_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        # claimed: all parents succeeded (or it is a root)
        (TaskState.PENDING, TaskState.QUEUED),
        # a new attempt replaces one whose message was published but never started
        (TaskState.QUEUED, TaskState.QUEUED),
        (TaskState.RETRYING, TaskState.QUEUED),
        # a worker took the attempt whose number the message carries
        (TaskState.QUEUED, TaskState.RUNNING),
        (TaskState.RETRYING, TaskState.RUNNING),
        # outcome of an attempt
        (TaskState.RUNNING, TaskState.SUCCEEDED),
        (TaskState.RUNNING, TaskState.FAILED),
        # (also when its worker vanished: the lease expired, or its process is gone)
        (TaskState.RUNNING, TaskState.RETRYING),
        # a task that cannot start (bad reference, unstorable params) fails without running
        (TaskState.QUEUED, TaskState.FAILED),
        (TaskState.RETRYING, TaskState.FAILED),
        # an upstream task failed with on_failure="block"
        (TaskState.PENDING, TaskState.BLOCKED),
        # the attempt failed and on_failure "skip" or "alternative:<id>" lets the run go on
        (TaskState.RUNNING, TaskState.SKIPPED),
        (TaskState.QUEUED, TaskState.SKIPPED),
        (TaskState.RETRYING, TaskState.SKIPPED),
        # an alternative whose task succeeded is not needed
        (TaskState.PENDING, TaskState.SKIPPED),
        # workflow retry "skip_failed"
        (TaskState.FAILED, TaskState.SKIPPED),
        # workflow retry: the task runs again, as new attempts
        (TaskState.SUCCEEDED, TaskState.PENDING),
        (TaskState.FAILED, TaskState.PENDING),
        (TaskState.SKIPPED, TaskState.PENDING),
        (TaskState.BLOCKED, TaskState.PENDING),
        (TaskState.CANCELLED, TaskState.PENDING),
        # cancel: nothing that has not finished will start
        (TaskState.PENDING, TaskState.CANCELLED),
        (TaskState.QUEUED, TaskState.CANCELLED),
        (TaskState.RETRYING, TaskState.CANCELLED),
        (TaskState.RUNNING, TaskState.CANCELLED),
    }
)


def check_run_transition(old: RunState, new: RunState) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is allowed for a run."""
    if (old, new) not in RUN_TRANSITIONS:
        raise InvalidTransition("run", old.value, new.value)


def check_task_transition(old: TaskState, new: TaskState) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is allowed for a task."""
    if (old, new) not in TASK_TRANSITIONS:
        raise InvalidTransition("task", old.value, new.value)


def task_sources(new: TaskState) -> tuple[str, ...]:
    """The states a task may move to ``new`` from, for a conditional ``UPDATE``."""
    return tuple(sorted(old.value for old, to in TASK_TRANSITIONS if to is new))


def task_moves(*old: TaskState, to: TaskState) -> tuple[str, ...]:
    """``old`` as values for a conditional ``UPDATE``, each checked against the table."""
    for state in old:
        check_task_transition(state, to)
    return tuple(sorted(state.value for state in old))


def run_sources(new: RunState) -> tuple[str, ...]:
    """The states a run may move to ``new`` from, for a conditional ``UPDATE``."""
    return tuple(sorted(old.value for old, to in RUN_TRANSITIONS if to is new))
