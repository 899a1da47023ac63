"""Settings from the environment: every field by its GLEITZEIT_ name, bad values named."""

from __future__ import annotations

import pytest

from gleitzeit.settings import Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///gleitzeit.db"
    assert settings.broker_url == "redis://localhost:6379/0"
    assert (settings.lease_seconds, settings.reconcile_interval) == (60.0, 30.0)
    assert settings.max_lost_attempts == 3


def test_every_field_reads_its_variable() -> None:
    settings = Settings.from_env(
        {
            "GLEITZEIT_DATABASE_URL": "postgresql://db/gz",
            "CELERY_BROKER_URL": "amqp://mq//",
            "GLEITZEIT_LEASE_SECONDS": "2.5",
            "GLEITZEIT_DISPATCH_TIMEOUT": "90",
            "GLEITZEIT_MAX_LOST_ATTEMPTS": "5",
            "GLEITZEIT_RESULT_LIMIT": "1024",
        }
    )
    assert settings.database_url == "postgresql://db/gz"
    assert settings.broker_url == "amqp://mq//"
    assert settings.lease_seconds == 2.5
    assert settings.dispatch_timeout == 90.0
    assert settings.max_lost_attempts == 5 and isinstance(settings.max_lost_attempts, int)
    assert settings.result_limit == 1024


def test_overrides_win_and_none_is_no_override() -> None:
    settings = Settings.from_env({"GLEITZEIT_LEASE_SECONDS": "9"}, lease_seconds=None)
    assert settings.lease_seconds == 9.0
    assert Settings.from_env({}, broker_url="memory://").broker_url == "memory://"


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (
            "GLEITZEIT_MAX_LOST_ATTEMPTS",
            "2.5",
            "GLEITZEIT_MAX_LOST_ATTEMPTS must be a whole number",
        ),
        ("GLEITZEIT_LEASE_SECONDS", "soon", "GLEITZEIT_LEASE_SECONDS must be a number"),
        ("GLEITZEIT_STALL_TIMEOUT", "0", "GLEITZEIT_STALL_TIMEOUT must be greater than 0"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({name: raw})
