"""Firing schedules: one tick submits the runs of every slot that has come.

Beat sends ``gleitzeit.schedules`` every ``schedule_interval`` seconds; a worker runs one
tick. A tick finds the schedules whose next slot has come (one indexed query, read-only),
works out each one's due slots (:func:`gleitzeit.schedules.due_slots`), and fires them in
one transaction per schedule (``Store.fire_schedule``): the conditional update that moves
the schedule's next slot on, then the slots' runs, keyed ``<prefix>:<slot ISO time>``.
Only after that commit are the runs' first tasks published.

Claim and submit are one transaction, so no order between them can lose a slot or fire
it twice: two ticks that found the same slot (two beats, a restarted beat, a tick slower
than the interval) both try the update and one matches; a crash before the commit leaves
the slot unclaimed and without a run, and the next tick fires it; a crash after the commit
and before the publish leaves claimed, unpublished attempts in the dispatch ledger, which
the reconciler publishes (as for every claim). The run key is a second guard: a slot's run
is never created twice, even by a schedule removed and added again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gleitzeit import codec
from gleitzeit.client import plan_run
from gleitzeit.dispatch import Dispatcher
from gleitzeit.errors import ScheduleError, StorageFailure
from gleitzeit.schedules import (
    SCHEDULED_AT,
    Cron,
    default_key_prefix,
    due_slots,
    parse_cron,
    run_key,
)
from gleitzeit.settings import Settings
from gleitzeit.store import RunPlan, Store
from gleitzeit.store.records import DueSchedule, ScheduleDefinition
from gleitzeit.workflow import Workflow, hash_json

log = logging.getLogger(__name__)

_NAME_LIMIT = 200
_NAME = re.compile(r"^[^\s:][^\s]*$")


@dataclass
class Ticked:
    """What one tick did: the slots it fired, as (schedule, slot time, run id), schedules
    another tick fired first, schedules that could not fire, messages published."""

    fired: list[tuple[str, str, str]] = field(default_factory=list)
    lost: int = 0
    failed: list[str] = field(default_factory=list)
    published: int = 0

    def __str__(self) -> str:
        parts = [f"fired {len(self.fired)}", f"published {self.published}"]
        if self.lost:
            parts.append(f"fired by another tick {self.lost}")
        if self.failed:
            parts.append(f"failed {', '.join(self.failed)}")
        return ", ".join(parts)


class Scheduler:
    """Fires the due schedules of one store, publishing through one dispatcher."""

    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings

    def tick(self, *, now: float | None = None) -> Ticked:
        """Fire every slot that has come by ``now`` (default: the database's clock).

        Raises :class:`StorageFailure` when the database is unreachable; the next tick
        tries again.
        """
        done = Ticked()
        for due in self.store.find_due_schedules(now=now):
            self._fire(due, done)
        if done.fired or done.failed:
            log.info("schedules: %s", done)
        return done

    def _fire(self, due: DueSchedule, done: Ticked) -> None:
        try:
            cron = parse_cron(due.cron, due.timezone)
            slots = due_slots(
                cron,
                due.next_slot,
                due.now,
                catchup=due.catchup,
                limit=self.settings.schedule_catchup_limit,
            )
            workflow = Workflow.from_dict(codec.loads(due.graph), source=f"schedule {due.name!r}")
            inputs = codec.loads(due.inputs)
            plans = [slot_plan(due, cron, slot, workflow, inputs) for slot in slots.fire]
            fired = self.store.fire_schedule(
                due.name,
                due=due.next_slot,
                following=slots.following,
                last=slots.fire[-1],
                plans=plans,
            )
        except StorageFailure as exc:
            if exc.transient:
                raise
            log.exception("schedule %s could not fire", due.name)
            done.failed.append(due.name)
            return
        except Exception:
            # this schedule's stored definition is at fault; the others go on
            log.exception("schedule %s could not fire", due.name)
            done.failed.append(due.name)
            return
        if not fired.claimed:
            done.lost += 1
            return
        done.published += len(self.dispatcher.publish(fired.dispatches))
        done.fired += [
            (due.name, cron.iso(slot), run_id)
            for slot, run_id in zip(slots.fire, fired.run_ids, strict=True)
        ]


def slot_plan(
    due: DueSchedule, cron: Cron, slot: float, workflow: Workflow, inputs: dict[str, Any]
) -> RunPlan:
    """The run of one slot: the schedule's workflow and inputs, ``scheduled_at`` the slot."""
    given = {**inputs, SCHEDULED_AT: cron.iso(slot)}
    return plan_run(workflow, given, key=run_key(due.key_prefix, cron, slot))


def define_schedule(
    name: str,
    workflow: Workflow,
    *,
    cron: str,
    timezone: str,
    inputs: Mapping[str, Any] | None,
    catchup: bool,
    key: str | None,
    start: float,
    strict_start: bool,
    registered: Iterable[str] | None = None,
) -> ScheduleDefinition:
    """Check a schedule and give the row to store, its first slot at ``start`` or after
    (strictly after with ``strict_start``).

    Raises :class:`ScheduleError` listing every problem with the name, cron expression,
    time zone, inputs and key, or ``WorkflowValidationError`` for the workflow (validated
    with the inputs and ``scheduled_at``, as each slot's run will be).
    """
    problems = _problems(name, inputs, catchup, key)
    for expression, zone in ((cron, "UTC"), ("* * * * *", timezone)):
        try:
            parse_cron(expression, zone)
        except ScheduleError as exc:
            problems.append(str(exc))
    if problems:
        where = f"schedule {name!r}" if isinstance(name, str) else "schedule"
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ScheduleError(f"{where} is invalid:\n{lines}")
    parsed = parse_cron(cron, timezone)
    given = dict(inputs or {})
    # validated as a slot's run will be submitted: scheduled_at is an input it may name
    sample = {**given, SCHEDULED_AT: parsed.iso(start)}
    plan_run(workflow, sample, registered=registered)
    graph = workflow.to_dict()
    first = parsed.next_after(start) if strict_start else parsed.first_at_or_after(start)
    return ScheduleDefinition(
        name=name,
        cron=parsed.expression,
        timezone=parsed.timezone,
        workflow=workflow.name,
        graph=codec.dumps(graph),
        graph_hash=hash_json(graph),
        inputs=codec.dumps(given),
        inputs_hash=hash_json(given),
        catchup=catchup,
        key_prefix=default_key_prefix(name) if key is None else key,
        first_slot=first,
    )


def _problems(
    name: Any, inputs: Mapping[str, Any] | None, catchup: Any, key: str | None
) -> list[str]:
    problems = []
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > _NAME_LIMIT:
        problems.append(
            f"name must be text of 1 to {_NAME_LIMIT} characters without spaces, not "
            f"starting with ':', got {name!r}"
        )
    if inputs is not None and not isinstance(inputs, Mapping):
        problems.append(f"inputs must be a mapping of names to values, got {inputs!r}")
    elif inputs and SCHEDULED_AT in inputs:
        problems.append(f"inputs may not name {SCHEDULED_AT!r}: each run gets its slot's time")
    else:
        try:
            codec.dumps(dict(inputs or {}))
        except (TypeError, ValueError) as exc:
            problems.append(f"inputs are not JSON: {exc}")
    if not isinstance(catchup, bool):
        problems.append(f"catchup must be true or false, got {catchup!r}")
    if key is not None and (not isinstance(key, str) or not key or len(key) > _NAME_LIMIT):
        problems.append(f"key must be text of 1 to {_NAME_LIMIT} characters, got {key!r}")
    return problems


def start_of(start: datetime | None, timezone: str) -> float | None:
    """``start`` in epoch seconds; a naive ``start`` is a wall-clock time in ``timezone``."""
    if start is None:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=parse_cron("* * * * *", timezone).zone)
    return start.timestamp()
