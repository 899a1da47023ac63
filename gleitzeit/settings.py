"""Settings from the environment, as a dataclass with defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gleitzeit.codec import DEFAULT_RESULT_LIMIT

DEFAULT_DATABASE_URL = "sqlite:///gleitzeit.db"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class Settings:
    """Where gleitzeit keeps its state and sends its messages.

    ``from_env`` reads ``GLEITZEIT_DATABASE_URL``, ``CELERY_BROKER_URL``,
    ``GLEITZEIT_RESULT_LIMIT`` (bytes) and ``GLEITZEIT_LEASE_SECONDS``.
    """

    #: SQLAlchemy URL of the store (``postgresql://`` uses psycopg 3)
    database_url: str = DEFAULT_DATABASE_URL
    #: Celery broker URL
    broker_url: str = DEFAULT_BROKER_URL
    #: largest JSON result a task may return, in bytes
    result_limit: int = DEFAULT_RESULT_LIMIT
    #: how long a started attempt is presumed alive without a heartbeat
    lease_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            database_url=env.get("GLEITZEIT_DATABASE_URL", DEFAULT_DATABASE_URL),
            broker_url=env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL),
            result_limit=_int(env, "GLEITZEIT_RESULT_LIMIT", DEFAULT_RESULT_LIMIT),
            lease_seconds=float(_int(env, "GLEITZEIT_LEASE_SECONDS", 300)),
        )
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(settings, **given)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
