"""One exception tree for everything gleitzeit raises.

Foreign exceptions (SQLAlchemy, kombu, Celery) are translated at the boundary that
meets them, with the original kept as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class GleitzeitError(Exception):
    """Root of every exception gleitzeit raises."""


class WorkflowValidationError(GleitzeitError, ValueError):
    """A workflow definition is invalid; ``.problems`` lists every problem found."""

    def __init__(
        self, problems: Iterable[str], *, workflow: str | None = None, hint: str | None = None
    ) -> None:
        self.problems: list[str] = list(problems)
        self.workflow = workflow
        #: what to do about it, where that is known (the CLI: how inputs are given)
        self.hint = hint
        where = f"workflow {workflow!r}" if workflow else "workflow"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        after = f"\n{hint}" if hint else ""
        super().__init__(f"{where} is invalid ({count} {noun}):\n{lines}{after}")


class ReferenceResolutionError(GleitzeitError):
    """A ``${...}`` reference could not be resolved when its task was about to run."""


class ResultError(GleitzeitError):
    """A task's result cannot be stored: it is not JSON or exceeds the size limit."""


class ParamsError(GleitzeitError, ValueError):
    """Params or inputs given to a workflow cannot be stored: they are not JSON."""


#: how a conflict names each part that differs
_DIFFERENT = {"graph": "a different graph", "inputs": "different inputs"}


class IdempotencyConflict(GleitzeitError):
    """A submission reused a key that names a run with another graph or other inputs."""

    def __init__(self, key: str, run_id: str, differs: Iterable[str]) -> None:
        self.key = key
        self.run_id = run_id
        #: what differs: ``"graph"``, ``"inputs"`` or both
        self.differs = list(differs)
        what = " and ".join(_DIFFERENT.get(part, f"a different {part}") for part in self.differs)
        super().__init__(f"key {key!r} already names run {run_id}, with {what}")


class RunNotFound(GleitzeitError, KeyError):
    """No run with that id (or, from ``Client.resolve_run_id``, that id prefix) is in the store."""

    def __init__(self, run_id: str, *, prefix: bool = False, store: str | None = None) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.prefix = prefix
        #: the store looked in, its password masked
        self.store = store

    def __str__(self) -> str:
        what = "an id starting with" if self.prefix else "id"
        where = f" in the store at {self.store}" if self.store else ""
        return f"no run with {what} {self.run_id!r}{where}"


class AmbiguousRunId(GleitzeitError, KeyError):
    """A run id prefix matches more than one run; ``.matches`` lists some of them."""

    def __init__(self, prefix: str, matches: Iterable[str], *, more: bool = False) -> None:
        self.prefix = prefix
        self.matches = list(matches)
        super().__init__(prefix, self.matches)
        self.more = more

    def __str__(self) -> str:
        listed = ", ".join(self.matches) + (", ..." if self.more else "")
        return f"run id {self.prefix!r} is ambiguous: runs {listed} start with it; give more of it"


class WorkflowFailed(GleitzeitError):
    """A run ended ``failed`` or ``cancelled``; ``.errors`` maps task id to its error."""

    def __init__(
        self, run_id: str, status: str, errors: Mapping[str, str], reason: str | None = None
    ) -> None:
        self.run_id = run_id
        self.status = status
        self.errors = dict(errors)
        #: why the run as a whole ended, when not only because a task failed (``stalled: ...``)
        self.reason = reason
        detail = "; ".join(f"{task}: {err}" for task, err in self.errors.items())
        if reason:
            detail = f"{reason}" + (f"; {detail}" if detail else "")
        super().__init__(f"run {run_id} ended {status}" + (f": {detail}" if detail else ""))


class RunTimeout(GleitzeitError, TimeoutError):
    """``Run.wait`` gave up before the run ended."""


class StorageFailure(GleitzeitError):
    """The SQL store failed; the SQLAlchemy error is the ``__cause__``.

    ``transient`` is true when the database was unreachable or locked past the retries
    (the next operation may pass), false for an error that retrying cannot fix.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class StoreNotReady(StorageFailure):
    """A command that only reads found no store, or one whose schema is not current; it
    creates and migrates nothing (``gleitzeit db upgrade`` does)."""


class ConfigurationError(GleitzeitError, ValueError):
    """A setting or option that cannot work as given: a malformed URL, a driver not installed."""


class LoadError(GleitzeitError):
    """A workflow file or task module could not be loaded: missing, a syntax error, a
    failing import; the message names the file and line."""


class RunControlError(GleitzeitError, ValueError):
    """A retry, cancel, pause or resume that the run's state does not allow; nothing changed."""


class GraphChanged(RunControlError):
    """A retry against a workflow definition that differs from the run's; nothing changed.

    ``force`` reruns the changed tasks under the new definition when only their params and
    options changed; a new shape of the graph is a new run.
    """


class UnknownTask(GleitzeitError):
    """A task's error when the worker that got its message has no Celery task of that name."""


class WorkerLost(GleitzeitError):
    """A task's error when the worker running it was lost too often (killed, out of memory)."""


class RunFailed(GleitzeitError):
    """A task's error when the reconciler failed its run (stalled, or not repairable)."""


class ScheduleError(GleitzeitError, ValueError):
    """A schedule cannot be stored as given (its cron, time zone, name, inputs or key);
    nothing was stored."""


class ScheduleConflict(ScheduleError):
    """A schedule of that name exists with another definition; remove it first."""

    def __init__(self, name: str, differs: Iterable[str]) -> None:
        self.name = name
        #: what differs: ``"cron expression"``, ``"time zone"``, ``"workflow"``, ``"inputs"``,
        #: ``"catchup"``, ``"key"``
        self.differs = list(differs)
        what = ", ".join(self.differs[:-1]) + " and " if len(self.differs) > 1 else ""
        what += self.differs[-1] if self.differs else "definition"
        plural = len(self.differs) > 1 or self.differs == ["inputs"]
        super().__init__(
            f"schedule {name!r} exists, defined otherwise: its {what} "
            f"{'differ' if plural else 'differs'}; remove it first to change it"
        )


class ScheduleNotFound(GleitzeitError, KeyError):
    """No schedule of that name exists in the store."""

    def __str__(self) -> str:
        return f"no schedule named {self.args[0]!r}"


class DispatchFailure(GleitzeitError):
    """A task message could not be published to the broker; the cause is kept."""


class InvalidTransition(GleitzeitError):
    """A state change that the state machine does not allow."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        super().__init__(f"{kind} cannot go from {old!r} to {new!r}")


class GraphFormatError(GleitzeitError, ValueError):
    """A graph was asked for in a format gleitzeit does not draw."""


class GraphvizError(GleitzeitError):
    """Graphviz's ``dot``, which draws a graph as SVG, is not installed or failed."""


def describe(value: Any) -> str:
    """Short, safe ``repr`` for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
