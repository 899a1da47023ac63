"""Submitting workflows and following their runs from an application."""

from __future__ import annotations

import getpass
import logging
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import Celery

from gleitzeit import codec, strategies
from gleitzeit.dispatch import Dispatcher
from gleitzeit.errors import (
    AmbiguousRunId,
    GraphChanged,
    ParamsError,
    RunNotFound,
    RunTimeout,
    WorkflowFailed,
)
from gleitzeit.graph import check_format, render, run_graph
from gleitzeit.reconcile import Reconciled, Reconciler
from gleitzeit.resolver import DependencyResolver
from gleitzeit.settings import Settings
from gleitzeit.states import FINAL_RUN_STATES, RunState, TaskState
from gleitzeit.store import RunPlan, RunRecord, Store, TaskRecord
from gleitzeit.store.control import RetryRequest
from gleitzeit.store.records import EventRecord, PlannedTask, RunProgress, ScheduleRecord
from gleitzeit.workflow import TaskSpec, Workflow, hash_json

if TYPE_CHECKING:
    from gleitzeit.scheduler import Ticked

log = logging.getLogger(__name__)

#: how many runs an ambiguous id prefix lists
AMBIGUOUS_SHOWN = 5
#: the length of a run id (a UUID with its hyphens)
RUN_ID_LENGTH = 36


def plan_run(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    *,
    key: str | None = None,
    registered: Iterable[str] | None = None,
) -> RunPlan:
    """Validate ``workflow`` with its inputs and compute every row a new run needs."""
    resolver = DependencyResolver(workflow)
    resolver.validate(inputs=inputs, registered=registered)
    try:
        inputs_json = codec.dumps(dict(inputs))
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"inputs of workflow {workflow.name!r} are not JSON: {exc}") from exc
    graph = workflow.to_dict()
    planned = [_planned_task(resolver, spec) for spec in workflow.specs]
    return RunPlan(
        run_id=str(uuid.uuid4()),
        name=workflow.name,
        key=key,
        graph=codec.dumps(graph),
        graph_hash=hash_json(graph),
        inputs=inputs_json,
        inputs_hash=hash_json(dict(inputs)),
        tasks=planned,
    )


def _planned_task(resolver: DependencyResolver, spec: TaskSpec) -> PlannedTask:
    options = {
        key: value
        for key, value in spec.to_dict().items()
        if key not in ("id", "task", "params", "depends_on")
    }
    children = resolver.children(spec.id)
    waiting_on = resolver.graph.in_degree(spec.id)
    primary = resolver.stands_in_for.get(spec.id)
    if primary is not None:
        # it waits for its own parents and for the failure of the task it stands in for,
        # and its result goes to that task's dependents
        options["stands_in_for"] = primary
        children = resolver.children(primary)
        waiting_on += 1
    return PlannedTask(
        task_id=spec.id,
        name=spec.name,
        params=codec.dumps(spec.params),
        sources=resolver.result_sources(spec.id),
        children=children,
        waiting_on=waiting_on,
        options=options,
    )


class Run:
    """A handle on one run. Properties read the store afresh on every access."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"<Run {self.id}>"

    @property
    def record(self) -> RunRecord:
        return self.client.store.get_run(self.id)

    @property
    def progress(self) -> RunProgress:
        """The run's state and task counts; reads neither its graph nor its inputs, so a
        loop may poll it as often as it likes."""
        return self.client.store.get_progress(self.id)

    @property
    def status(self) -> str:
        return self.progress.state.value

    @property
    def tasks(self) -> dict[str, TaskRecord]:
        """Per-task state, attempts, error and timings."""
        return self.client.store.get_tasks(self.id)

    def results(self) -> dict[str, Any]:
        """Results of the tasks that have succeeded so far."""
        return self.client.store.get_results(self.id)

    def history(self) -> list[EventRecord]:
        """The run's events, in the order they happened."""
        return self.client.store.get_events(self.id)

    def graph(self, format: str = "mermaid") -> str:
        """The run's graph colored by its tasks' states (:meth:`Client.graph`)."""
        return self.client.graph(self.id, format=format)

    def wait(self, timeout: float | None = None, *, interval: float = 0.5) -> dict[str, Any]:
        """Wait for the run to end; return ``{task_id: result}`` or raise ``WorkflowFailed``.

        Raises :class:`RunTimeout` when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            state = self.progress.state
            if state in FINAL_RUN_STATES:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"run {self.id} is still {state.value} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, interval)
        if state is RunState.SUCCEEDED:
            return self.results()
        errors = {
            task_id: task.error or task.state.value
            for task_id, task in self.tasks.items()
            if task.state is TaskState.FAILED
        }
        raise WorkflowFailed(self.id, state.value, errors, self.record.error)


class Client:
    """Submits workflows to the store and broker named by the settings (or environment).

    The store is created or migrated on first use, unless ``create_store=False``: then it
    must exist with the newest schema (:class:`StoreNotReady` otherwise), as commands that
    only look at runs want.
    """

    def __init__(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        *,
        app: Celery | None = None,
        settings: Settings | None = None,
        create_store: bool = True,
    ) -> None:
        self.settings = settings or Settings.from_env(
            database_url=database_url, broker_url=broker_url
        )
        self.create_store = create_store
        if app is None:
            from gleitzeit.worker import create_app

            app = create_app(self.settings)
        self.app = app
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.from_settings(self.settings, existing=not self.create_store)
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(
            self.app, self.store, breaker_reset_seconds=self.settings.breaker_reset_seconds
        )

    def reconcile(self) -> Reconciled:
        """One reconciliation round over every run in the store (:mod:`gleitzeit.reconcile`)."""
        return Reconciler(self.store, self.dispatcher, self.settings).run_once()

    def submit(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        registered: Iterable[str] | None = None,
    ) -> Run:
        """Validate, persist and start a run; with ``key``, the same key gives the same run.

        Raises ``WorkflowValidationError`` (nothing stored) or ``IdempotencyConflict``.
        """
        plan = plan_run(workflow, inputs or {}, key=key, registered=registered)
        submitted = self.store.create_run(plan)
        self.dispatcher.publish(submitted.dispatches)
        return Run(self, submitted.run_id)

    def resolve_run_id(self, prefix: str) -> str:
        """The id of the one run whose id starts with ``prefix`` (as git takes a commit's).

        Raises :class:`RunNotFound` when none does, :class:`AmbiguousRunId` (listing some
        of them) when several do. One indexed read of at most a few ids.
        """
        found = self.store.run_ids_starting(prefix, limit=AMBIGUOUS_SHOWN + 1) if prefix else []
        if prefix in found:
            return prefix
        if not found:
            whole = len(prefix) == RUN_ID_LENGTH
            raise RunNotFound(prefix, prefix=not whole, store=self.store.location)
        if len(found) > 1:
            shown = found[:AMBIGUOUS_SHOWN]
            raise AmbiguousRunId(prefix, shown, more=len(found) > AMBIGUOUS_SHOWN)
        return found[0]

    def get(self, run_id: str) -> Run:
        """The run with this id; raises ``RunNotFound``."""
        self.store.get_run(run_id)
        return Run(self, run_id)

    def graph(self, run_id: str, *, format: str = "mermaid") -> str:
        """The run's graph drawn as ``"mermaid"``, ``"dot"``, ``"svg"`` (needs Graphviz's
        ``dot``) or ``"json"``, its tasks colored by state, with a legend
        (:mod:`gleitzeit.graph`). Raises ``RunNotFound``, ``GraphFormatError`` or
        ``GraphvizError``."""
        check_format(format)
        record, tasks = self.store.get_run_statuses(run_id)
        workflow = Workflow.from_dict(record.graph, source=f"run {run_id}")
        drawn = run_graph(workflow, tasks, run_id=run_id, run_state=record.state)
        return render(drawn, format)

    def runs(
        self, *, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The newest runs, optionally of one status or workflow name."""
        return self.store.list_runs(status=status, name=name, limit=limit)

    # -- run control ---------------------------------------------------------------------

    def cancel(self, run_id: str, *, terminate: bool = True, by: str | None = None) -> bool:
        """End the run ``cancelled``: nothing that has not started will start.

        Queued messages are revoked (a revoked message, or one that arrives anyway, does no
        work); with ``terminate``, Celery is asked to stop attempts that are running
        (``revoke(terminate=True)``: SIGTERM to the pool process running it). Their late
        outcomes are ignored either way. Returns ``False`` if the run was cancelled already;
        raises :class:`RunControlError` for a run that ended otherwise.
        """
        done = self.store.cancel_run(run_id, by=by or caller())
        if done.revoke:
            self._revoke(done.revoke, terminate=terminate)
        return done.changed

    def pause(self, run_id: str, *, by: str | None = None) -> bool:
        """Dispatch nothing more and start nothing more; running tasks finish.

        Returns ``False`` if the run was paused already.
        """
        return self.store.pause_run(run_id, by=by or caller()).changed

    def resume(self, run_id: str, *, by: str | None = None) -> bool:
        """Go on with a paused run: what became ready is dispatched, what waited gets a new
        attempt. Returns ``False`` if the run was running already."""
        done = self.store.resume_run(run_id, by=by or caller())
        self.dispatcher.publish(done.dispatches)
        return done.changed

    def retry(
        self,
        run_id: str,
        strategy: str = strategies.FROM_FAILURE,
        *,
        inputs: Mapping[str, Any] | None = None,
        workflow: Workflow | None = None,
        force: bool = False,
        by: str | None = None,
    ) -> Run:
        """Run an ended run again, in place, as new attempts.

        ``strategy``: ``"from_failure"`` keeps succeeded results and reruns the failed,
        blocked, cancelled and skipped-by-failure tasks and what depends on them;
        ``"from_start"`` reruns everything; ``"skip_failed"`` marks failed tasks skipped
        (their dependents run and read ``None``) and runs what was blocked.
        ``inputs``: new inputs; the tasks that read a changed input rerun, with their
        dependents. ``workflow``: the definition the caller has now; if it differs from the
        run's, the retry is refused (:class:`GraphChanged`) unless ``force``, which reruns
        the changed tasks under the new definition (the graph's shape must be the same).
        """
        record = self.store.get_run(run_id)
        # the store refuses a run that has not ended, in the transaction that retries it
        request = _retry_request(record, strategy, inputs, workflow, force, by or caller())
        done = self.store.retry_run(run_id, request)
        self.dispatcher.publish(done.dispatches)
        return Run(self, run_id)

    # -- schedules -----------------------------------------------------------------------

    def schedule(
        self,
        name: str,
        workflow: Workflow,
        *,
        cron: str,
        timezone: str = "UTC",
        inputs: Mapping[str, Any] | None = None,
        catchup: bool = False,
        key: str | None = None,
        start: datetime | None = None,
        registered: Iterable[str] | None = None,
    ) -> ScheduleRecord:
        """Submit a run of ``workflow`` at each slot of ``cron`` in ``timezone``.

        Each slot's run gets ``inputs`` plus ``scheduled_at``, the slot's local time (ISO
        8601 with the offset), and the key ``<key>:<scheduled_at>`` (``key`` defaults to
        ``schedule:<name>``), so a slot has one run however many beats fire it. Slots
        missed while nothing fired: the latest one only, or with ``catchup`` each of them,
        oldest first. The first slot is the first after now, or the first at ``start`` or
        after (a naive ``start`` is a wall-clock time in ``timezone``): with ``catchup``,
        a ``start`` in the past fires the slots since then.

        Adding a schedule exactly as stored already changes nothing. Raises
        :class:`ScheduleError` for a bad name, cron expression, time zone, inputs or key,
        :class:`ScheduleConflict` when ``name`` is taken by another definition, and
        ``WorkflowValidationError`` for an invalid workflow; in each case nothing is stored.
        """
        from gleitzeit.scheduler import define_schedule, start_of

        given = start_of(start, timezone)
        definition = define_schedule(
            name,
            workflow,
            cron=cron,
            timezone=timezone,
            inputs=inputs,
            catchup=catchup,
            key=key,
            start=self.store.now() if given is None else given,
            strict_start=given is None,
            registered=registered,
        )
        self.store.add_schedule(definition)
        return self.store.list_schedules(name)[0]

    def unschedule(self, name: str) -> None:
        """Remove a schedule; its runs stay. Raises :class:`ScheduleNotFound`."""
        self.store.remove_schedule(name)

    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name: when it fires next, when it fired last, that run's state."""
        return self.store.list_schedules()

    def pause_schedule(self, name: str) -> bool:
        """Fire nothing more until resumed; ``False`` when it was paused already."""
        return self.store.pause_schedule(name)

    def resume_schedule(self, name: str) -> bool:
        """Fire again from the first slot after now: slots that passed while it was paused
        are not fired. ``False`` when it was not paused."""
        return self.store.resume_schedule(name)

    def fire_schedules(self, *, now: float | None = None) -> Ticked:
        """One tick (what beat's ``gleitzeit.schedules`` runs): fire every slot that has
        come by ``now`` (epoch seconds; default the database's clock)."""
        from gleitzeit.scheduler import Scheduler

        return Scheduler(self.store, self.dispatcher, self.settings).tick(now=now)

    def _revoke(self, message_ids: list[str], *, terminate: bool) -> None:
        try:
            self.app.control.revoke(message_ids, terminate=terminate, signal="SIGTERM")
        except Exception as exc:  # the store has the run cancelled: a lost revoke is harmless
            log.warning("could not revoke %d messages: %s", len(message_ids), exc)


def caller() -> str:
    """Who is acting, for the run's history: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _retry_request(
    record: RunRecord,
    strategy: str,
    inputs: Mapping[str, Any] | None,
    workflow: Workflow | None,
    force: bool,
    by: str,
) -> RetryRequest:
    stored = Workflow.from_dict(record.graph, source=f"run {record.id}")
    current = stored
    updates: list[PlannedTask] = []
    changed: set[str] = set()
    if workflow is not None and workflow.graph_hash() != record.graph_hash:
        changed, updates = _changed_definition(record, stored, workflow, force)
        current = workflow
    resolver = DependencyResolver(current)
    new_inputs = record.inputs if inputs is None else dict(inputs)
    resolver.validate(inputs=new_inputs)
    moved = {
        name
        for name in set(record.inputs) | set(new_inputs)
        if name not in record.inputs
        or name not in new_inputs
        or record.inputs[name] != new_inputs[name]
    }
    changed |= {
        task_id
        for task_id, found in resolver.references.items()
        if any(ref.is_input and ref.input_name in moved for ref in found)
    }
    try:
        inputs_json = None if inputs is None else codec.dumps(new_inputs)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"new inputs of run {record.id} are not JSON: {exc}") from exc
    forced = current is not stored
    return RetryRequest(
        strategy=strategy,
        by=by,
        changed=frozenset(changed),
        inputs=inputs_json,
        expect_graph_hash=record.graph_hash,
        graph=codec.dumps(current.to_dict()) if forced else None,
        graph_hash=current.graph_hash() if forced else None,
        updates=updates,
    )


def _changed_definition(
    record: RunRecord, stored: Workflow, workflow: Workflow, force: bool
) -> tuple[set[str], list[PlannedTask]]:
    """The tasks whose definition changed, and their new rows; refused unless ``force``.

    A new shape (tasks added or removed, dependencies changed) is refused even with ``force``,
    and the refusal says so instead of suggesting it.
    """
    old = {spec.id: spec for spec in stored.specs}
    new = {spec.id: spec for spec in workflow.specs}
    changed = sorted(tid for tid in old.keys() & new.keys() if old[tid] != new[tid])
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    workflow.validate()
    before, after = DependencyResolver(stored), DependencyResolver(workflow)
    reshaped = sorted(
        tid
        for tid in old.keys() & new.keys()
        if set(before.parents(tid)) != set(after.parents(tid))
        or before.stands_in_for.get(tid) != after.stands_in_for.get(tid)
    )
    if added or removed or reshaped or stored.name != workflow.name:
        what = [f"added: {added}"] if added else []
        what += [f"removed: {removed}"] if removed else []
        what += [f"dependencies changed: {reshaped}"] if reshaped else []
        if stored.name != workflow.name:
            what.append(f"renamed {stored.name!r} -> {workflow.name!r}")
        raise GraphChanged(
            f"run {record.id} was submitted with another shape of {record.name!r} "
            f"({'; '.join(what)}); a retry reruns tasks of the graph it has and may change only "
            "their params and options: submit the new definition as a new run"
        )
    if not force:
        raise GraphChanged(
            f"run {record.id} was submitted with another definition of {record.name!r} "
            f"(tasks changed: {changed}); retry with force=True (--force) to rerun them under "
            "the new definition, or submit it as a new run"
        )
    return set(changed), [_planned_task(after, new[tid]) for tid in changed]
