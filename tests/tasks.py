"""Tasks the integration tests run on real Celery workers (``-I tests.tasks``).

Side effects are files under a directory the test passes in, so that a test can count
how often a body really ran, across worker processes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from celery import shared_task

from gleitzeit import task


def _mark(marks: str | None, name: str) -> int:
    """Record one execution of ``name``; return how many there were before this one."""
    if marks is None:
        return 0
    folder = Path(marks)
    folder.mkdir(parents=True, exist_ok=True)
    before = len(list(folder.glob(f"{name}.*")))
    (folder / f"{name}.{os.getpid()}.{uuid.uuid4().hex}").write_text("")
    return before


def count_marks(marks: str, name: str) -> int:
    """How many times the task ``name`` ran with this ``marks`` folder."""
    return len(list(Path(marks).glob(f"{name}.*")))


@task(name="tests.noop")
def noop(marks: str | None = None, name: str = "noop") -> None:
    _mark(marks, name)


@task(name="tests.value")
def value(value: Any, marks: str | None = None, name: str = "value") -> Any:
    _mark(marks, name)
    return value


@task(name="tests.add")
def add(a: float, b: float, marks: str | None = None, name: str = "add") -> float:
    _mark(marks, name)
    return a + b


@task(name="tests.total")
def total(values: list[float], marks: str | None = None, name: str = "total") -> float:
    _mark(marks, name)
    return sum(values)


@task(name="tests.describe")
def describe(**params: Any) -> dict[str, Any]:
    """The type name of every param, and the params themselves."""
    return {
        "types": {key: type(item).__name__ for key, item in params.items()},
        "params": params,
    }


@task(name="tests.flaky")
def flaky(marks: str, name: str, failures: int, result: Any = "ok") -> Any:
    """Fail with ``ConnectionError`` the first ``failures`` times it runs."""
    if _mark(marks, name) < failures:
        raise ConnectionError(f"{name}: transient failure")
    return result


@task(name="tests.fail")
def fail(message: str = "broken", marks: str | None = None, name: str = "fail") -> None:
    _mark(marks, name)
    raise ValueError(message)


@task(name="tests.sleep")
def sleep(seconds: float, marks: str | None = None, name: str = "sleep") -> float:
    _mark(marks, name)
    time.sleep(seconds)
    return seconds


@task(name="tests.wait_for")
def wait_for(barrier: str, marks: str, name: str, timeout: float = 60.0) -> str:
    """Say it is waiting, then wait until the file ``barrier`` exists."""
    _mark(marks, f"waiting-{name}")
    deadline = time.monotonic() + timeout
    while not Path(barrier).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {barrier} never opened")
        time.sleep(0.005)
    _mark(marks, name)
    return name


@task(name="tests.not_json")
def not_json() -> Any:
    return {1, 2, 3}


@task(name="tests.big")
def big(size: int) -> str:
    return "x" * size


@shared_task(name="legacy.multiply")
def multiply(x: int, y: int) -> int:
    """An existing plain Celery task, unaware of gleitzeit."""
    return x * y


@task(name="tests.slow")
def slow(seconds: float, marks: str, name: str, after: Any = None) -> str:
    """Mark ``started-<name>``, take ``seconds``, then mark ``<name>``: a finished run.

    ``after`` only ties the task to the results it references.
    """
    _mark(marks, f"started-{name}")
    time.sleep(seconds)
    _mark(marks, name)
    return name


@task(name="tests.poison")
def poison(marks: str, name: str = "poison") -> None:
    """Kill the worker process that runs it, every time (as the OOM killer would)."""
    _mark(marks, name)
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="tests.divide")
def divide(a: float, b: float, marks: str, name: str = "divide") -> float:
    """``a / b``; fails with ``ZeroDivisionError`` on a bad input (``b == 0``)."""
    _mark(marks, name)
    return a / b


@task(name="tests.step")
def step(step: int, marks: str, fail_at: int = 0, after: Any = None) -> dict[str, Any]:
    """Step ``step`` of a saga: marks ``step-<n>``, fails when ``step == fail_at``."""
    _mark(marks, f"step-{step}")
    if step == fail_at:
        raise RuntimeError(f"step {step} failed")
    return {"step": step, "booked": f"booking-{step}"}


@task(name="tests.undo")
def undo(result: Any, marks: str, step: int, **params: Any) -> dict[str, Any]:
    """Compensate ``tests.step``: marks ``undo-<n>`` with the time, returns what it undid."""
    _mark(marks, f"undo-{step}")
    (Path(marks) / f"undone-at.{time.time_ns()}.{step}").write_text("")
    return {"undid": result, "step": step}
