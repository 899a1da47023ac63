"""How the command line shows runs, tasks and attempts: functions from records to text."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from gleitzeit.states import TaskState
from gleitzeit.store.records import AttemptRecord, RunRecord, TaskRecord

#: characters of a result or error in a run's table of tasks
SHORT = 60
#: characters of a result shown with one task's attempts
LONG = 4000


def clock(at: float | None) -> str:
    """A time of day (local), or ``-``."""
    return "-" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def moment(at: float | None) -> str:
    """A date and time (local), or ``-``."""
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def took(start: float | None, end: float | None, *, now: float | None = None) -> str:
    """How long from ``start`` to ``end`` (to ``now`` while it lasts, marked ``+``)."""
    if start is None:
        return "-"
    until = end if end is not None else (time.time() if now is None else now)
    seconds = max(0.0, until - start)
    mark = "" if end is not None else "+"
    if seconds < 60:
        return f"{seconds:.1f}s{mark}" if seconds >= 0.1 else f"{seconds * 1000:.0f}ms{mark}"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s{mark}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{mark}"


def short(text: str, width: int = SHORT) -> str:
    """``text`` on one line, cut to ``width`` characters (``...`` says it was cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Aligned columns, two spaces apart; the last column is not padded."""
    found = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in found) for i in range(len(headers) - 1)]
    padded = ([cell.ljust(w) for cell, w in zip(row, widths, strict=False)] for row in found)
    return ["  ".join([*cells, row[-1]]).rstrip() for cells, row in zip(padded, found, strict=True)]


def outcome(task: TaskRecord) -> str:
    """A task's result as compact JSON, or its error."""
    if task.error is not None:
        return task.error
    if task.state is not TaskState.SUCCEEDED:
        return ""
    return json.dumps(task.result, separators=(",", ":"), default=str)


def ordered(record: RunRecord, found: Mapping[str, TaskRecord]) -> list[TaskRecord]:
    """The run's tasks in the order of its definition; others (compensations) after."""
    defined = [spec.get("id") for spec in record.graph.get("tasks", [])]
    position = {task_id: i for i, task_id in enumerate(defined)}
    return sorted(found.values(), key=lambda t: (position.get(t.task_id, len(position)), t.task_id))


def run_lines(record: RunRecord, found: Mapping[str, TaskRecord]) -> list[str]:
    """``gleitzeit status RUN``: the run, then a table of its tasks."""
    done = record.tasks_total - record.tasks_unfinished
    lines = [
        f"run {record.id} {record.name}: {record.state.value}"
        f" ({done}/{record.tasks_total} tasks done)",
        f"submitted {moment(record.created_at)}  ended {moment(record.finished_at)}"
        f"  took {took(record.created_at, record.finished_at)}",
    ]
    if record.error:
        lines.append(f"error: {record.error}")
    rows = [
        [
            task.task_id,
            task.state.value,
            str(task.attempt),
            took(task.started_at, task.finished_at),
            short(outcome(task)),
        ]
        for task in ordered(record, found)
    ]
    lines.append("")
    lines += table(["TASK", "STATE", "ATTEMPTS", "TOOK", "RESULT / ERROR"], rows)
    return lines


def task_lines(run_id: str, task: TaskRecord) -> list[str]:
    """``gleitzeit status RUN --task T``: the task, then each attempt with its traceback."""
    lines = [
        f"task {task.task_id} ({task.name}) of run {run_id}: {task.state.value},"
        f" attempt {task.attempt}",
        f"queued {moment(task.queued_at)}  started {moment(task.started_at)}"
        f"  ended {moment(task.finished_at)}",
    ]
    if task.state is TaskState.SUCCEEDED:
        result = json.dumps(task.result, indent=2, default=str)
        if len(result) > LONG:
            more = f"\n... ({len(result) - LONG} characters more: --json prints it all)"
            result = result[:LONG] + more
        lines.append("result: " + result)
    elif task.error is not None:
        lines.append(f"error: {task.error}")
    for attempt in task.attempts:
        lines += ["", *attempt_lines(attempt)]
    if not task.attempts:
        lines += ["", "no attempt has started"]
    return lines


def attempt_lines(attempt: AttemptRecord) -> list[str]:
    head = (
        f"attempt {attempt.attempt}: {attempt.state}, started {clock(attempt.started_at)},"
        f" ended {clock(attempt.finished_at)}, took {took(attempt.started_at, attempt.finished_at)}"
    )
    lines = [head + (f", on {attempt.worker}" if attempt.worker else "")]
    if attempt.error_type is not None:
        lines.append(f"  {attempt.error_type}: {attempt.error_message}")
    if attempt.traceback:
        lines += ["  " + line for line in attempt.traceback.rstrip().splitlines()]
    return lines


def runs_lines(found: Sequence[RunRecord]) -> list[str]:
    """``gleitzeit list``: one row per run."""
    rows = [
        [
            record.id,
            record.name,
            record.state.value,
            f"{record.tasks_total - record.tasks_unfinished}/{record.tasks_total}",
            moment(record.created_at),
            moment(record.finished_at),
            took(record.created_at, record.finished_at),
        ]
        for record in found
    ]
    return table(["RUN", "NAME", "STATE", "TASKS", "SUBMITTED", "ENDED", "TOOK"], rows)


def as_json(value: Any) -> Any:
    """A record (or records) as JSON-ready data: states as their names, no graph."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    data = asdict(value)
    data.pop("graph", None)
    return {k: getattr(v, "value", v) for k, v in data.items()}
