"""Settings from the environment, as a dataclass with defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from gleitzeit.codec import DEFAULT_RESULT_LIMIT
from gleitzeit.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///gleitzeit.db"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class Settings:
    """Where gleitzeit keeps its state and sends its messages, and how it recovers.

    ``from_env`` reads ``GLEITZEIT_DATABASE_URL``, ``CELERY_BROKER_URL`` and, for every
    other field, ``GLEITZEIT_<FIELD NAME IN CAPITALS>`` (``GLEITZEIT_LEASE_SECONDS=60``).
    Durations are in seconds; every one is judged by the database's clock.
    """

    #: SQLAlchemy URL of the store (``postgresql://`` uses psycopg 3)
    database_url: str = DEFAULT_DATABASE_URL
    #: Celery broker URL
    broker_url: str = DEFAULT_BROKER_URL
    #: largest JSON result a task may return, in bytes
    result_limit: int = DEFAULT_RESULT_LIMIT
    #: a running attempt whose heartbeat stops for this long is presumed lost
    lease_seconds: float = 60.0
    #: how often beat runs the reconciler
    reconcile_interval: float = 30.0
    #: a published attempt that has not started after this long is dispatched again
    dispatch_timeout: float = 600.0
    #: an attempt left unpublished this long (its publisher died) is published again
    republish_after: float = 10.0
    #: a run in which no task started, finished or held a live lease for this long fails
    stall_timeout: float = 86400.0
    #: a task whose worker vanished this many times (a poison task) fails
    max_lost_attempts: int = 3
    #: a run whose reconciliation failed this many times in a row fails
    max_reconcile_failures: int = 5
    #: how long publishing stays off after the broker failed repeatedly
    breaker_reset_seconds: float = 30.0
    #: how long a store operation retries a database that is unreachable or locked
    storage_retry_seconds: float = 30.0
    #: how often beat looks for schedules whose slot has come (a slot fires this late at most)
    schedule_interval: float = 5.0
    #: slots a schedule with catchup fires per tick at most, oldest first
    schedule_catchup_limit: int = 100
    #: how often a worker marks itself seen in the store; ``gleitzeit health`` counts a
    #: worker unseen for three of these as gone
    worker_heartbeat_interval: float = 10.0
    #: the metrics exporter reads rows recorded at least this long ago, so that a scrape
    #: never passes over a transaction that commits after it (a ledger mark is stamped
    #: with when its message went out, a fraction of a second before it is written)
    metrics_settle_seconds: float = 5.0
    #: a worker serves its process-local metrics (its circuit breaker, its publish sizes)
    #: on this port of the loopback; 0: it does not. Under the prefork pool set
    #: ``PROMETHEUS_MULTIPROC_DIR`` too (see :mod:`gleitzeit.process_metrics`)
    worker_metrics_port: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "database_url": env.get("GLEITZEIT_DATABASE_URL", DEFAULT_DATABASE_URL),
            "broker_url": env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL),
        }
        for field in fields(cls):
            if field.name in values:
                continue
            name = f"GLEITZEIT_{field.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _number(name, raw, whole=field.type == "int")
        settings = cls(**values)
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(settings, **given)


def _number(name: str, raw: str, *, whole: bool) -> float | int:
    try:
        value: float | int = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {raw!r}")
    return value
