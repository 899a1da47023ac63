"""What the store hands out: plain, immutable records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gleitzeit.schedules import Cron
from gleitzeit.states import RunState, TaskState

_MESSAGE_NAMESPACE = uuid.UUID("6f1c3f0e-6c55-4f4e-9a43-6c1e3a0c2b7d")


def message_id(run_id: str, task_id: str, attempt: int) -> str:
    """The Celery message id of an attempt: the same (run, task, attempt) gives the same id."""
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, f"{run_id}/{task_id}/{attempt}"))


@dataclass(frozen=True)
class Dispatch:
    """An attempt claimed for publishing: the message is ``(run_id, task_id, attempt)``."""

    run_id: str
    task_id: str
    attempt: int
    queue: str | None = None
    priority: int | None = None
    timeout: float | None = None
    countdown: float = 0.0

    @property
    def message_id(self) -> str:
        return message_id(self.run_id, self.task_id, self.attempt)


class Published(NamedTuple):
    """An attempt handed to the broker, and when: ``time.monotonic()`` of its process."""

    dispatch: Dispatch
    at: float


@dataclass(frozen=True)
class PlannedTask:
    """A task row to insert at submit, computed from the resolved graph."""

    task_id: str
    name: str
    params: str
    sources: list[str]
    children: list[str]
    waiting_on: int
    options: dict[str, Any]


@dataclass(frozen=True)
class RunPlan:
    """Everything ``Store.create_run`` writes in its one transaction."""

    run_id: str
    name: str
    key: str | None
    graph: str
    graph_hash: str
    inputs: str
    inputs_hash: str
    tasks: list[PlannedTask]


@dataclass(frozen=True)
class Submitted:
    run_id: str
    created: bool
    dispatches: list[Dispatch] = field(default_factory=list)


@dataclass(frozen=True)
class ErrorInfo:
    """Why an attempt failed."""

    type: str
    message: str
    traceback: str | None = None


@dataclass(frozen=True)
class StartedAttempt:
    """An attempt a worker now holds, with all it needs to resolve its params."""

    run_id: str
    task_id: str
    attempt: int
    name: str
    params: Any
    options: dict[str, Any]
    inputs: dict[str, Any]
    results: dict[str, Any]
    #: earlier attempts that failed by the task's own error (these count against retries)
    failures: int = 0
    #: sources that were skipped: references to them yield ``None``, whatever their path
    skipped: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording an attempt: whether it counted, and what to publish.

    ``durable`` is False for a success whose commit did not wait for the disk (PostgreSQL's
    common case): ``Store.confirm_success`` waits for it before the message is acknowledged.
    """

    recorded: bool
    dispatches: list[Dispatch] = field(default_factory=list)
    durable: bool = True


@dataclass(frozen=True)
class RunProgress:
    """A run's state and task counts: what waiting on a run reads, without its definition."""

    state: RunState
    tasks_total: int
    tasks_unfinished: int
    tasks_failed: int


class FinishedTask(NamedTuple):
    """A task that ended, and when (the database's clock): what following a run reads."""

    task_id: str
    state: TaskState
    attempt: int
    finished_at: float


@dataclass(frozen=True)
class RunRecord:
    id: str
    name: str
    key: str | None
    state: RunState
    graph: dict[str, Any]
    graph_hash: str
    inputs: dict[str, Any]
    tasks_total: int
    tasks_unfinished: int
    tasks_failed: int
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True)
class AttemptRecord:
    task_id: str
    attempt: int
    state: str
    worker: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class TaskRecord:
    """A task of a run as stored: state, attempt, result or error, timings."""

    task_id: str
    name: str
    state: TaskState
    attempt: int
    result: Any
    error_type: str | None
    error_message: str | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        if self.error_type is None:
            return None
        return f"{self.error_type}: {self.error_message}"


@dataclass(frozen=True)
class TaskStatus:
    """A task's state, attempt and error, without its params, result or timings: what
    drawing a run's graph reads."""

    task_id: str
    state: TaskState
    attempt: int
    error_type: str | None
    error_message: str | None

    @property
    def error(self) -> str | None:
        if self.error_type is None:
            return None
        return f"{self.error_type}: {self.error_message}"


@dataclass(frozen=True)
class EventRecord:
    """One event of a run's history.

    ``id`` orders the events stored as such; the progress of every attempt (``task_queued``,
    ``task_started``, ``task_succeeded``) is read from the dispatch ledger and the attempts'
    rows instead, and has no ``id``.
    """

    id: int | None
    key: str
    type: str
    task_id: str | None
    attempt: int | None
    data: Any
    created_at: float


@dataclass(frozen=True)
class DispatchRecord:
    """One row of the dispatch ledger."""

    task_id: str
    attempt: int
    message_id: str
    queue: str | None
    countdown: float
    created_at: float
    published_at: float | None
    publish_count: int


@dataclass(frozen=True)
class Holder:
    """The process that started a running attempt."""

    host: str | None
    pid: int | None


@dataclass
class StuckRun:
    """What the reconciler found wrong with one run, judged by the database's clock."""

    run_id: str
    #: pending tasks with nothing to wait on that were never claimed
    ready: list[str] = field(default_factory=list)
    #: (task, attempt) claimed but left unpublished: the publisher died or the broker was down
    unpublished: list[tuple[str, int]] = field(default_factory=list)
    #: (task, attempt) published but never started: the message was lost
    unstarted: list[tuple[str, int]] = field(default_factory=list)
    #: (task, attempt) running with an expired lease: the worker vanished
    lost: list[tuple[str, int]] = field(default_factory=list)
    #: every task is final but the run is not marked final
    finished: bool = False
    #: nothing progressed for longer than the stall timeout
    stalled: bool = False


@dataclass(frozen=True)
class Repair:
    """What one run's reconciliation changed: new attempts to publish, rows to publish again."""

    dispatches: list[Dispatch] = field(default_factory=list)
    republish: list[Dispatch] = field(default_factory=list)
    #: how many of each kind of repair were applied (a race lost to normal progress is not)
    applied: dict[str, int] = field(default_factory=dict)


class RunCount(NamedTuple):
    """A run's state and counters, read as its row was updated (and locked)."""

    state: RunState
    unfinished: int
    failed: int
    retries: int


@dataclass(frozen=True)
class ScheduleDefinition:
    """A schedule as ``Store.add_schedule`` stores it: checked, its workflow in data form."""

    name: str
    cron: str
    timezone: str
    workflow: str
    graph: str
    graph_hash: str
    inputs: str
    inputs_hash: str
    catchup: bool
    key_prefix: str
    #: the first slot to fire (epoch seconds)
    first_slot: float


@dataclass(frozen=True)
class ScheduleRecord:
    """A stored schedule, with when it fires next, when it fired last and how that run is."""

    name: str
    cron: str
    timezone: str
    workflow: str
    graph: dict[str, Any]
    inputs: dict[str, Any]
    catchup: bool
    key_prefix: str
    paused: bool
    #: the earliest slot not fired yet (epoch seconds)
    next_slot: float
    last_slot: float | None
    last_run_id: str | None
    #: the state of the last slot's run, ``None`` before the first
    last_run_state: RunState | None
    created_at: float

    @property
    def next_at(self) -> str:
        """The next slot's local time in the schedule's zone, ISO 8601 with the offset."""
        return Cron(self.cron, self.timezone).iso(self.next_slot)

    @property
    def last_at(self) -> str | None:
        """The last fired slot's time as ``next_at`` gives it, ``None`` before the first."""
        if self.last_slot is None:
            return None
        return Cron(self.cron, self.timezone).iso(self.last_slot)


@dataclass(frozen=True)
class DueSchedule:
    """A schedule whose next slot has come, as a tick found it, with the tick's time."""

    name: str
    cron: str
    timezone: str
    graph: str
    inputs: str
    catchup: bool
    key_prefix: str
    next_slot: float
    now: float


@dataclass(frozen=True)
class FiredSlots:
    """What claiming a schedule's due slots did: whether this tick won them, the run of
    each slot (one a key already named included), and the attempts to publish."""

    claimed: bool
    run_ids: list[str] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
