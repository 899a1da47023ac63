"""Is the deployment well? Each part checked on its own, with its state and answer time.

:func:`check_health` is what ``gleitzeit health`` prints, and what an HTTP API's readiness
route can return: the store reachable with its schema current, the broker reachable,
the reconciler seen within three of its intervals, workers seen within three of their
heartbeat intervals. Every staleness is judged by the database's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from kombu.connection import Connection
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gleitzeit.errors import StorageFailure
from gleitzeit.settings import Settings
from gleitzeit.store import Store
from gleitzeit.store.engine import engine_for, sqlite_file_missing
from gleitzeit.store.migrate import current_revision, head_revision
from gleitzeit.store.processes import RECONCILER, WORKER, ProcessRecord

#: the parts :func:`check_health` checks, in this order
CHECKS = ("store", "broker", "reconciler", "workers")
#: a process unseen for this many of its intervals is counted as gone
MISSED_INTERVALS = 3


@dataclass(frozen=True)
class Check:
    """One part of the deployment: well or not, why, and how long the check took."""

    name: str
    ok: bool
    detail: str
    seconds: float
    #: what the check found, for machines (a worker's name, age and tasks, ...)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """Every check made; the deployment is well when each one is."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


class _Failed(Exception):
    """A check's finding that the part is not well, with what to print."""


def check_health(
    settings: Settings,
    *,
    only: Collection[str] | None = None,
    worker: str | None = None,
    timeout: float = 5.0,
) -> Health:
    """Check the parts of the deployment ``settings`` name (those of ``only``, if given).

    Never raises for a part that is down: that part's check says so. ``worker``: the
    workers check asks that this worker (its Celery hostname) be seen, not just any.
    ``timeout`` bounds the broker's answer.
    """
    wanted = [name for name in CHECKS if only is None or name in only]
    store = _store(settings)
    found: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
        "store": lambda: _check_store(settings),
        "broker": lambda: _check_broker(settings.broker_url, timeout),
        "reconciler": lambda: _check_reconciler(store, settings),
        "workers": lambda: _check_workers(store, settings, worker),
    }
    return Health([_timed(name, found[name]) for name in wanted])


def _timed(name: str, check: Callable[[], tuple[str, dict[str, Any]]]) -> Check:
    began = time.perf_counter()
    try:
        detail, data = check()
        ok = True
    except _Failed as exc:
        detail, data, ok = str(exc), {}, False
    except (StorageFailure, SQLAlchemyError) as exc:
        detail, data, ok = f"store unreachable: {first_line(exc)}", {}, False
    return Check(name, ok, detail, round(time.perf_counter() - began, 6), data)


def first_line(exc: BaseException) -> str:
    """What went wrong, in one line: the database driver's own words when it raised."""
    found: BaseException | None = exc
    while found is not None and not isinstance(found, DBAPIError):
        found = found.__cause__
    if found is not None and found.orig is not None:
        exc = found.orig
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _store(settings: Settings) -> Callable[[], Store]:
    """The store, opened when a check first needs it, without migrating or retrying."""
    opened: list[Store] = []

    def get() -> Store:
        if not opened:
            _sqlite_file_exists(settings.database_url)
            opened.append(Store(engine_for(settings.database_url), retry_seconds=0.0))
        return opened[0]

    return get


def _sqlite_file_exists(url: str) -> None:
    missing = sqlite_file_missing(url)
    if missing:
        raise _Failed(f"store unreachable: no SQLite database at {missing}")


def _check_store(settings: Settings) -> tuple[str, dict[str, Any]]:
    _sqlite_file_exists(settings.database_url)
    engine = engine_for(settings.database_url)
    current, head = current_revision(engine), head_revision(engine)
    shown = engine.url.render_as_string(hide_password=True)
    data = {"url": shown, "revision": current, "head": head}
    if current != head:
        raise _Failed(f"schema at {current or 'none'}, {head} expected: run gleitzeit db upgrade")
    return f"{shown} at schema {current}", data


def _check_broker(url: str, timeout: float) -> tuple[str, dict[str, Any]]:
    shown = str(maybe_sanitize_url(url))
    options = {"max_retries": 0}
    with Connection(url, connect_timeout=timeout, transport_options=options) as conn:  # type: ignore[no-untyped-call]
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
        except Exception as exc:  # kombu raises the transport's own errors
            raise _Failed(f"broker unreachable at {shown}: {first_line(exc)}") from exc
    return f"{shown} answers", {"url": shown}


def _check_reconciler(store: Callable[[], Store], settings: Settings) -> tuple[str, dict[str, Any]]:
    limit = MISSED_INTERVALS * settings.reconcile_interval
    found = store().get_processes(RECONCILER)
    if not found:
        raise _Failed("the reconciler never ran: is beat running?")
    last = found[0]
    data = {"age": round(last.age, 3), "host": last.host, "pid": last.pid, **last.details}
    if last.age > limit:
        raise _Failed(f"the reconciler was last seen {last.age:.0f} s ago (more than {limit:g} s)")
    return f"seen {last.age:.1f} s ago on {last.host}", data


def _check_workers(
    store: Callable[[], Store], settings: Settings, name: str | None
) -> tuple[str, dict[str, Any]]:
    limit = MISSED_INTERVALS * settings.worker_heartbeat_interval
    found = store().get_processes(WORKER)
    live = [worker for worker in found if worker.age <= limit]
    data = {"workers": [_worker(worker, limit) for worker in found]}
    if name is not None:
        if not any(worker.name == name for worker in live):
            raise _Failed(f"worker {name} not seen in the last {limit:g} s")
        return f"{name} seen in the last {limit:g} s", data
    if not live:
        raise _Failed(f"no worker seen in the last {limit:g} s ({len(found)} seen before)")
    names = ", ".join(worker.name for worker in live)
    return f"{len(live)} seen in the last {limit:g} s: {names}", data


def _worker(worker: ProcessRecord, limit: float) -> dict[str, Any]:
    return {
        "name": worker.name,
        "host": worker.host,
        "pid": worker.pid,
        "age": round(worker.age, 3),
        "live": worker.age <= limit,
        "tasks": worker.tasks,
    }
