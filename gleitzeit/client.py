"""Submitting workflows and following their runs from an application."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery

from gleitzeit import codec
from gleitzeit.dispatch import Dispatcher
from gleitzeit.errors import ParamsError, RunTimeout, WorkflowFailed
from gleitzeit.reconcile import Reconciled, Reconciler
from gleitzeit.resolver import DependencyResolver
from gleitzeit.settings import Settings
from gleitzeit.states import FINAL_RUN_STATES, RunState, TaskState
from gleitzeit.store import RunPlan, RunRecord, Store, TaskRecord
from gleitzeit.store.records import EventRecord, PlannedTask
from gleitzeit.workflow import TaskSpec, Workflow, hash_json


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
    def status(self) -> str:
        return self.record.state.value

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

    def wait(self, timeout: float | None = None, *, interval: float = 0.5) -> dict[str, Any]:
        """Wait for the run to end; return ``{task_id: result}`` or raise ``WorkflowFailed``.

        Raises :class:`RunTimeout` when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            record = self.record
            if record.state in FINAL_RUN_STATES:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"run {self.id} is still {record.state.value} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, interval)
        if record.state is RunState.SUCCEEDED:
            return self.results()
        errors = {
            task_id: task.error or task.state.value
            for task_id, task in self.tasks.items()
            if task.state is TaskState.FAILED
        }
        raise WorkflowFailed(self.id, record.state.value, errors, record.error)


class Client:
    """Submits workflows to the store and broker named by the settings (or environment)."""

    def __init__(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        *,
        app: Celery | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(
            database_url=database_url, broker_url=broker_url
        )
        if app is None:
            from gleitzeit.worker import create_app

            app = create_app(self.settings)
        self.app = app
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.from_settings(self.settings)
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

    def get(self, run_id: str) -> Run:
        """The run with this id; raises ``RunNotFound``."""
        self.store.get_run(run_id)
        return Run(self, run_id)

    def runs(
        self, *, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The newest runs, optionally of one status or workflow name."""
        return self.store.list_runs(status=status, name=name, limit=limit)
