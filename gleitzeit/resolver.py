"""The DependencyResolver: a workflow as a networkx DAG, validated before anything runs.

Edges go from a task to the tasks that depend on it. Dependencies are the tasks a
task's params reference plus its ``depends_on``. Validation collects every problem
(bad ids, duplicates, malformed or dangling references, self-dependencies, cycles named
as paths, params that are not JSON, unknown inputs or task names) and raises them
together, so a bad workflow never reaches the store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from gleitzeit.errors import WorkflowValidationError
from gleitzeit.refs import INPUTS, Reference, find_references
from gleitzeit.strategies import COMPENSATION_RESULT
from gleitzeit.workflow import (
    ALTERNATIVE_PREFIX,
    ON_FAILURE_BLOCK,
    ON_FAILURE_SKIP,
    TaskSpec,
    Workflow,
    alternative_of,
)

_TASK_ID = re.compile(r"^[A-Za-z0-9_-]+$")
ON_FAILURE_CHOICES = (ON_FAILURE_BLOCK, ON_FAILURE_SKIP, f"{ALTERNATIVE_PREFIX}<task id>")


class DependencyResolver:
    """The graph of one workflow: parents, children, order and validation."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self.graph: nx.DiGraph = nx.DiGraph()
        self.references: dict[str, list[Reference]] = {}
        #: alternative -> the task it stands in for
        self.stands_in_for: dict[str, str] = {}
        self._problems: list[str] = []
        self._build()

    # -- building ----------------------------------------------------------------------

    def _build(self) -> None:
        seen: set[str] = set()
        for spec in self.workflow.specs:
            if spec.id in seen:
                self._problems.append(f"duplicate task id {spec.id!r}")
            seen.add(spec.id)
            self.graph.add_node(spec.id)
        for spec in self.workflow.specs:
            self._check_spec(spec)
            self._add_edges(spec)
        for spec in self.workflow.specs:
            self._check_alternative(spec)

    def _check_spec(self, spec: TaskSpec) -> None:
        where = f"task {spec.id!r}"
        if not _TASK_ID.match(spec.id):
            self._problems.append(f"{where}: ids may use only letters, digits, '_' and '-'")
        if spec.id == INPUTS:
            self._problems.append(f"{where}: 'inputs' is reserved for the run's inputs")
        if not spec.name:
            self._problems.append(f"{where}: no Celery task name")
        try:
            json.dumps(spec.params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            self._problems.append(f"{where}: params are not JSON: {exc}")
        if spec.retries < 0:
            self._problems.append(f"{where}: retries must be >= 0, got {spec.retries}")
        if spec.timeout is not None and not (spec.timeout > 0 and math.isfinite(spec.timeout)):
            self._problems.append(f"{where}: timeout must be a positive number of seconds")
        if spec.on_failure not in (ON_FAILURE_BLOCK, ON_FAILURE_SKIP) and not alternative_of(
            spec.on_failure
        ):
            self._problems.append(
                f"{where}: on_failure {spec.on_failure!r} is not one of {list(ON_FAILURE_CHOICES)}"
            )
        self._check_compensate(spec, where)

    def _check_compensate(self, spec: TaskSpec, where: str) -> None:
        if spec.compensate is not None:
            if not spec.compensate:
                self._problems.append(f"{where}: compensate names no Celery task")
            if COMPENSATION_RESULT in spec.params:
                self._problems.append(
                    f"{where}: has a param {COMPENSATION_RESULT!r}, but its compensation "
                    f"receives the task's result by that name; rename the param"
                )

    def _check_alternative(self, spec: TaskSpec) -> None:
        """An alternative must exist, stand in for one task only and be free to run."""
        alternative = alternative_of(spec.on_failure)
        if not alternative:
            return
        where = f"task {spec.id!r}: on_failure {spec.on_failure!r}"
        specs = self.workflow.tasks
        if alternative == spec.id:
            self._problems.append(f"{where} names the task itself")
        elif alternative not in specs:
            self._problems.append(f"{where} names unknown task {alternative!r}")
        elif alternative in self.stands_in_for:
            other = self.stands_in_for[alternative]
            self._problems.append(
                f"{where}: {alternative!r} is already the alternative of {other!r}; "
                "a task stands in for one task only"
            )
        elif alternative_of(specs[alternative].on_failure):
            self._problems.append(
                f"{where}: {alternative!r} has an alternative of its own; "
                "alternatives do not chain (give it on_failure 'block' or 'skip')"
            )
        elif alternative in nx.descendants(self.graph, spec.id):
            self._problems.append(
                f"{where}: {alternative!r} depends on {spec.id!r}, so it could never run "
                "in its place"
            )
        else:
            dependents = sorted(self.graph.successors(alternative))
            if dependents:
                self._problems.append(
                    f"{where}: {dependents} depend on the alternative {alternative!r}; "
                    f"depend on {spec.id!r} instead (its result is {alternative!r}'s "
                    "when it stands in)"
                )
            self.stands_in_for[alternative] = spec.id

    def _add_edges(self, spec: TaskSpec) -> None:
        where = f"task {spec.id!r}"
        refs, malformed = find_references(spec.params)
        self._problems.extend(f"{where}: {problem}" for problem in malformed)
        self.references[spec.id] = refs
        upstream: list[tuple[str, str]] = [
            (ref.source, ref.text) for ref in refs if not ref.is_input
        ]
        upstream += [(dep, "depends_on") for dep in spec.depends_on]
        for parent, how in upstream:
            if parent == spec.id:
                self._problems.append(f"{where} depends on itself ({how})")
            elif parent not in self.graph:
                self._problems.append(f"{where}: {how} names unknown task {parent!r}")
            else:
                self.graph.add_edge(parent, spec.id)

    # -- validation --------------------------------------------------------------------

    def cycles(self) -> list[str]:
        """Every cycle, one per strongly connected component, as ``a -> b -> a``."""
        return _cycles(self.graph)

    def flow(self) -> nx.DiGraph:
        """The graph in the order tasks may run: an alternative after the task it stands in
        for, and before that task's dependents (who read its result)."""
        flow = self.graph.copy()
        for alternative, primary in self.stands_in_for.items():
            flow.add_edge(primary, alternative)
            flow.add_edges_from((alternative, child) for child in self.graph.successors(primary))
        return flow

    def input_names(self) -> set[str]:
        """Names of the run inputs the graph references."""
        return {ref.input_name for refs in self.references.values() for ref in refs if ref.is_input}

    def problems(
        self,
        inputs: Mapping[str, Any] | None = None,
        registered: Iterable[str] | None = None,
    ) -> list[str]:
        found = list(self._problems)
        if not self.workflow.specs:
            found.append("the workflow has no tasks")
        cycles = self.cycles()
        found += [f"cycle: {cycle}" for cycle in cycles]
        if not cycles and self.stands_in_for:
            found += [f"cycle through an alternative: {cycle}" for cycle in _cycles(self.flow())]
        if inputs is not None:
            for name in sorted(self.input_names() - set(inputs)):
                users = sorted(
                    task
                    for task, refs in self.references.items()
                    if any(ref.is_input and ref.input_name == name for ref in refs)
                )
                found.append(f"input {name!r} is referenced by {users} but not given")
        if registered is not None:
            known = set(registered)
            for spec in self.workflow.specs:
                if spec.name not in known:
                    found.append(
                        f"task {spec.id!r}: no Celery task named {spec.name!r} is registered"
                    )
                if spec.compensate is not None and spec.compensate not in known:
                    found.append(
                        f"task {spec.id!r}: its compensate names {spec.compensate!r}, "
                        "which is not a registered Celery task"
                    )
        return found

    def validate(
        self,
        inputs: Mapping[str, Any] | None = None,
        registered: Iterable[str] | None = None,
    ) -> None:
        """Raise :class:`WorkflowValidationError` with every problem, if there are any."""
        problems = self.problems(inputs, registered)
        if problems:
            raise WorkflowValidationError(problems, workflow=self.workflow.name)

    # -- the graph ---------------------------------------------------------------------

    def parents(self, task_id: str) -> list[str]:
        return list(self.graph.predecessors(task_id))

    def children(self, task_id: str) -> list[str]:
        return list(self.graph.successors(task_id))

    def roots(self) -> list[str]:
        return [node for node in self.graph.nodes if self.graph.in_degree(node) == 0]

    def leaves(self) -> list[str]:
        """Tasks nothing depends on: the results a run is for."""
        return [node for node in self.graph.nodes if self.graph.out_degree(node) == 0]

    def order(self) -> list[str]:
        """Task ids in an order where every task comes after all it depends on."""
        return list(nx.topological_sort(self.flow()))

    def result_sources(self, task_id: str) -> list[str]:
        """The tasks whose stored results ``task_id``'s params reference."""
        return sorted({ref.source for ref in self.references[task_id] if not ref.is_input})


def _cycles(graph: nx.DiGraph) -> list[str]:
    found = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        start = min(component)
        edges = nx.find_cycle(graph.subgraph(component), source=start)
        path = [edges[0][0], *(edge[1] for edge in edges)]
        found.append(" -> ".join(path))
    return sorted(found)
