"""Defining a workflow: ``Workflow``, ``wf.task(...)``, handles, ``@task``, and the data form.

A workflow is data: an ordered list of :class:`TaskSpec`. ``to_dict`` and ``from_dict``
(and the JSON and YAML forms built on them) give the same graph, naming tasks by their
registered Celery name, so a graph can travel through a CLI or an HTTP API without
gleitzeit ever importing code named by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import yaml

from gleitzeit.errors import WorkflowValidationError
from gleitzeit.policy import Backoff, type_name
from gleitzeit.refs import PathSegment, format_reference

ON_FAILURE_BLOCK = "block"
ON_FAILURE_SKIP = "skip"
ALTERNATIVE_PREFIX = "alternative:"

_SPEC_FIELDS = (
    "id",
    "task",
    "params",
    "depends_on",
    "retries",
    "backoff",
    "retry_on",
    "timeout",
    "on_failure",
    "queue",
    "priority",
    "compensate",
)


def alternative_of(on_failure: str) -> str | None:
    """The task id an ``on_failure="alternative:<id>"`` names, else ``None``."""
    if on_failure.startswith(ALTERNATIVE_PREFIX):
        return on_failure[len(ALTERNATIVE_PREFIX) :].strip()
    return None


@dataclass(frozen=True)
class TaskSpec:
    """One task of a workflow, as stored: everything needed to run it anywhere."""

    id: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[str, ...] = ()
    timeout: float | None = None
    on_failure: str = ON_FAILURE_BLOCK
    queue: str | None = None
    priority: int | None = None
    #: the Celery task that undoes this one when its run fails (a saga), or ``None``
    compensate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "task": self.name,
            "params": self.params,
            "depends_on": list(self.depends_on),
            "retries": self.retries,
            "backoff": self.backoff.to_dict(),
            "retry_on": list(self.retry_on),
            "timeout": self.timeout,
            "on_failure": self.on_failure,
            "queue": self.queue,
            "priority": self.priority,
        }
        # only when set, so that graphs without compensations keep the hash they had
        if self.compensate is not None:
            data["compensate"] = self.compensate
        return data


@dataclass(frozen=True)
class ResultRef:
    """A reference to (a part of) a task's result, built without writing a string.

    ``handle.result["rows"][0]`` is ``"${extract.result.rows[0]}"`` when used as a param.
    """

    task_id: str
    path: tuple[PathSegment, ...] = ()

    def __getitem__(self, key: str | int) -> ResultRef:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"a result path takes str keys and int indexes, not {key!r}")
        return ResultRef(self.task_id, (*self.path, key))

    def __str__(self) -> str:
        return format_reference(self.task_id, self.path)


@dataclass(frozen=True)
class TaskHandle:
    """What ``wf.task`` returns: the task's id and a way to reference its result."""

    id: str

    @property
    def result(self) -> ResultRef:
        return ResultRef(self.id)


@dataclass(frozen=True)
class TaskDefaults:
    """Options given to ``@task``, used by ``wf.task`` unless it overrides them."""

    name: str
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[str, ...] = ()
    timeout: float | None = None
    queue: str | None = None
    priority: int | None = None


_TASK_DEFAULTS: dict[int, TaskDefaults] = {}

F = TypeVar("F", bound=Callable[..., Any])


def _seconds(value: float | None) -> float | None:
    """A timeout as a float, so that 60 and 60.0 give the same graph hash."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def _retry_on_names(retry_on: Iterable[type[BaseException] | str]) -> tuple[str, ...]:
    return tuple(item if isinstance(item, str) else type_name(item) for item in retry_on)


def task(
    fn: F | None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: Backoff | Mapping[str, Any] | float | None = None,
    retry_on: Iterable[type[BaseException] | str] = (),
    timeout: float | None = None,
    queue: str | None = None,
    priority: int | None = None,
    **celery_options: Any,
) -> Any:
    """Make a function a Celery task (``shared_task``) with gleitzeit's per-task defaults.

    The result is an ordinary Celery task: ``.delay()`` works as always. Its registered
    name is ``name`` or ``module.function``; workers find it by that name.
    """
    from celery import shared_task

    def wrap(func: F) -> Any:
        task_name = name or f"{func.__module__}.{func.__name__}"
        celery_task = shared_task(name=task_name, **celery_options)(func)
        _TASK_DEFAULTS[id(celery_task)] = TaskDefaults(
            name=task_name,
            retries=retries,
            backoff=Backoff.coerce(backoff),
            retry_on=_retry_on_names(retry_on),
            timeout=_seconds(timeout),
            queue=queue,
            priority=priority,
        )
        return celery_task

    return wrap(fn) if fn is not None else wrap


def known_task_defaults() -> list[TaskDefaults]:
    """The defaults of every ``@task`` defined in this process so far."""
    return list(_TASK_DEFAULTS.values())


def task_defaults(fn: Any) -> TaskDefaults:
    """The name and defaults of a ``@task``, a Celery task, or a registered task name."""
    if isinstance(fn, str):
        return TaskDefaults(name=fn)
    known = _TASK_DEFAULTS.get(id(fn))
    if known is not None:
        return known
    task_name = getattr(fn, "name", None)
    if isinstance(task_name, str) and task_name:
        return TaskDefaults(name=task_name)
    raise TypeError(
        f"{fn!r} is not a Celery task: decorate it with @gleitzeit.task, or give the name "
        "of a task registered on the workers"
    )


def _plain(value: Any) -> Any:
    """Params as plain data: handles' result references become ``${...}`` strings."""
    if isinstance(value, ResultRef):
        return str(value)
    if isinstance(value, TaskHandle):
        return str(value.result)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class Workflow:
    """A named graph of tasks. Add tasks with :meth:`task`; submit it with a ``Client``."""

    def __init__(self, name: str, tasks: Iterable[TaskSpec] = ()) -> None:
        self.name = name
        self.specs: list[TaskSpec] = list(tasks)

    def __repr__(self) -> str:
        count = len(self.specs)
        return f"Workflow({self.name!r}, {count} {'task' if count == 1 else 'tasks'})"

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        """Tasks by id (the last one wins where an id is duplicated; validation reports it)."""
        return {spec.id: spec for spec in self.specs}

    def task(
        self,
        id: str,
        fn: Any,
        *,
        params: Mapping[str, Any] | None = None,
        depends_on: Iterable[str | TaskHandle] = (),
        retries: int | None = None,
        backoff: Backoff | Mapping[str, Any] | float | None = None,
        retry_on: Iterable[type[BaseException] | str] | None = None,
        timeout: float | None = None,
        on_failure: str = ON_FAILURE_BLOCK,
        queue: str | None = None,
        priority: int | None = None,
        compensate: Any = None,
    ) -> TaskHandle:
        """Add a task and return its handle.

        ``fn`` is a ``@task`` function, any Celery task, or the registered name of one.
        Options left ``None`` come from ``@task``'s defaults. Problems in the graph are
        reported together by :meth:`validate` (and by ``submit``), not here.

        ``on_failure``: ``"block"`` (dependents are blocked), ``"skip"`` (dependents run
        and read ``None``), or ``"alternative:<task id>"`` (that task runs in this one's
        place; dependents read its result through this task's id).
        ``compensate``: a task (as ``fn``) that undoes this one. When the run fails, the
        compensations of the tasks that succeeded run one by one, latest first, each
        called with this task's params and ``result=`` its result.
        """
        defaults = task_defaults(fn)
        spec = TaskSpec(
            id=id,
            name=defaults.name,
            params=_plain(dict(params or {})),
            depends_on=tuple(d.id if isinstance(d, TaskHandle) else d for d in depends_on),
            retries=defaults.retries if retries is None else retries,
            backoff=defaults.backoff if backoff is None else Backoff.coerce(backoff),
            retry_on=defaults.retry_on if retry_on is None else _retry_on_names(retry_on),
            timeout=defaults.timeout if timeout is None else _seconds(timeout),
            on_failure=on_failure,
            queue=defaults.queue if queue is None else queue,
            priority=defaults.priority if priority is None else priority,
            compensate=None if compensate is None else task_defaults(compensate).name,
        )
        self.specs.append(spec)
        return TaskHandle(id)

    def validate(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        registered: Iterable[str] | None = None,
    ) -> None:
        """Raise :class:`WorkflowValidationError` listing every problem of the graph.

        ``inputs``, when given, must provide every input the graph references;
        ``registered``, when given, must contain every task name.
        """
        from gleitzeit.resolver import DependencyResolver

        DependencyResolver(self).validate(inputs=inputs, registered=registered)

    def graph(self, format: str = "mermaid") -> str:
        """The workflow's graph drawn as ``"mermaid"``, ``"dot"``, ``"svg"`` (needs
        Graphviz's ``dot``) or ``"json"`` (:mod:`gleitzeit.graph`); raises
        :class:`WorkflowValidationError` for a graph that is not valid."""
        from gleitzeit.graph import check_format, definition_graph, render

        check_format(format)
        return render(definition_graph(self), format)

    # -- the data form ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The graph as plain data (tasks named by their Celery name)."""
        return {"name": self.name, "tasks": [spec.to_dict() for spec in self.specs]}

    def to_json(self, **dumps_options: Any) -> str:
        return json.dumps(self.to_dict(), **dumps_options)

    def graph_hash(self) -> str:
        """A stable hash of the graph, stored with each run to detect a changed definition."""
        return hash_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "workflow") -> Workflow:
        """Build a workflow from its data form; every problem is reported at once."""
        return _WorkflowReader(source).read(data)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> Workflow:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkflowValidationError(
                [f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
            ) from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<yaml>") -> Workflow:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise WorkflowValidationError([f"{source}: invalid YAML{where}: {problem}"]) from exc
        return cls.from_dict(data, source=source)


def hash_json(value: Any) -> str:
    """sha256 of a value's canonical JSON form."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _WorkflowReader:
    """Reads the data form, collecting every problem with where it is."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def read(self, data: Any) -> Workflow:
        if not isinstance(data, Mapping):
            raise WorkflowValidationError(
                [
                    f"{self.source}: expected a mapping with 'name' and 'tasks', "
                    f"got {type(data).__name__}"
                ]
            )
        name = data.get("name")
        if not isinstance(name, str) or not name:
            self.problems.append(f"{self.source}: 'name' must be a non-empty string")
        unknown = set(data) - {"name", "tasks", "description"}
        if unknown:
            self.problems.append(f"{self.source}: unknown top-level fields {sorted(unknown)}")
        specs = [spec for spec in self._tasks(data.get("tasks")) if spec is not None]
        if self.problems:
            raise WorkflowValidationError(self.problems, workflow=name if name else None)
        return Workflow(str(name), specs)

    def _tasks(self, tasks: Any) -> list[TaskSpec | None]:
        if isinstance(tasks, Mapping):
            items: Sequence[Any] = [
                {"id": key, **value} if isinstance(value, Mapping) else value
                for key, value in tasks.items()
            ]
        elif isinstance(tasks, list):
            items = tasks
        else:
            self.problems.append(f"{self.source}: 'tasks' must be a list or a mapping of tasks")
            return []
        return [self._task(item, f"{self.source}: tasks[{i}]") for i, item in enumerate(items)]

    def _task(self, item: Any, where: str) -> TaskSpec | None:
        if not isinstance(item, Mapping):
            self.problems.append(f"{where}: expected a mapping, got {type(item).__name__}")
            return None
        if isinstance(item.get("id"), str):
            where = f"{where} (id {item['id']!r})"
        before = len(self.problems)
        unknown = set(item) - set(_SPEC_FIELDS)
        if unknown:
            self.problems.append(f"{where}: unknown fields {sorted(unknown)}")
        spec_id = self._typed(item, "id", str, where, required=True)
        name = self._typed(item, "task", str, where, required=True)
        params = self._typed(item, "params", dict, where) or {}
        depends_on = self._typed(item, "depends_on", list, where) or []
        retries = self._typed(item, "retries", int, where) or 0
        retry_on = self._typed(item, "retry_on", list, where) or []
        timeout = self._typed(item, "timeout", (int, float), where)
        on_failure = self._typed(item, "on_failure", str, where) or ON_FAILURE_BLOCK
        queue = self._typed(item, "queue", str, where)
        priority = self._typed(item, "priority", int, where)
        compensate = self._typed(item, "compensate", str, where)
        try:
            backoff = Backoff.coerce(item.get("backoff"))
        except (TypeError, ValueError) as exc:
            self.problems.append(f"{where}: backoff: {exc}")
            backoff = Backoff()
        if len(self.problems) > before:
            return None
        return replace(
            TaskSpec(id=spec_id, name=name),
            params=dict(params),
            depends_on=tuple(str(d) for d in depends_on),
            retries=retries,
            backoff=backoff,
            retry_on=tuple(str(r) for r in retry_on),
            timeout=None if timeout is None else float(timeout),
            on_failure=on_failure,
            queue=queue,
            priority=priority,
            compensate=compensate,
        )

    def _typed(
        self,
        item: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        where: str,
        *,
        required: bool = False,
    ) -> Any:
        value = item.get(key)
        if value is None:
            if required:
                self.problems.append(f"{where}: missing required field {key!r}")
            return None
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "number"
            self.problems.append(f"{where}: {key!r} must be {expected}, got {type(value).__name__}")
            return None
        return value
