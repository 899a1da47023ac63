"""Settings checks (pure): what breaks gleitzeit's guarantees is named, with the setting."""

from __future__ import annotations

from typing import Any

import pytest

from gleitzeit.checks import Finding, TaskLimits, check_settings
from gleitzeit.settings import Settings

SAFE: dict[str, Any] = {
    "broker_url": "redis://localhost:6379/0",
    "accept_content": ["json"],
    "worker_prefetch_multiplier": 1,
    "broker_transport_options": {"visibility_timeout": 3600},
    "beat_schedule": {"gleitzeit.reconcile": {"task": "gleitzeit.reconcile", "schedule": 30}},
}
EXECUTOR = {"acks_late": True, "reject_on_worker_lost": True}


def findings(
    conf: dict[str, Any] | None = None,
    *,
    executor: dict[str, Any] | None = EXECUTOR,
    limits: TaskLimits | None = None,
    settings: Settings | None = None,
) -> list[Finding]:
    return check_settings(
        {**SAFE, **(conf or {})},
        executor=executor,
        limits=limits or TaskLimits(),
        settings=settings or Settings(),
    )


def settings_named(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.setting) for f in found]


def test_gleitzeits_own_defaults_pass() -> None:
    assert findings() == []


def test_the_shipped_app_passes() -> None:
    from gleitzeit.checks import check_app
    from gleitzeit.worker import create_app

    app = create_app(Settings(broker_url="redis://localhost:6379/0"))
    assert [f for f in check_app(app, Settings()) if f.level == "error"] == []


@pytest.mark.parametrize(
    ("conf", "executor", "expected"),
    [
        ({}, {"acks_late": False, "reject_on_worker_lost": True}, ("error", "task_acks_late")),
        (
            {},
            {"acks_late": True, "reject_on_worker_lost": False},
            ("warning", "task_reject_on_worker_lost"),
        ),
        ({}, None, ("error", "gleitzeit.execute")),
        ({"accept_content": ["json", "pickle"]}, EXECUTOR, ("error", "accept_content")),
        (
            {"accept_content": ["application/x-python-serialize"]},
            EXECUTOR,
            ("error", "accept_content"),
        ),
        ({"task_always_eager": True}, EXECUTOR, ("error", "task_always_eager")),
        ({"worker_prefetch_multiplier": 4}, EXECUTOR, ("warning", "worker_prefetch_multiplier")),
        ({"beat_schedule": {}}, EXECUTOR, ("warning", "beat_schedule")),
    ],
)
def test_each_breaking_setting_is_named(
    conf: dict[str, Any], executor: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    assert settings_named(findings(conf, executor=executor)) == [expected]


def test_a_task_timeout_beyond_the_visibility_timeout_is_an_error() -> None:
    found = findings(
        {"broker_transport_options": {"visibility_timeout": 600}},
        limits=TaskLimits(longest_timeout=900.0),
    )
    assert settings_named(found) == [("error", "broker_transport_options.visibility_timeout")]
    assert "910 s" in found[0].message  # the timeout plus the hard limit's grace


def test_a_retry_backoff_beyond_the_visibility_timeout_is_an_error() -> None:
    found = findings(
        {"broker_transport_options": {"visibility_timeout": 60}},
        limits=TaskLimits(longest_backoff=300.0),
    )
    assert settings_named(found) == [("error", "broker_transport_options.visibility_timeout")]


def test_the_visibility_timeout_matters_only_on_brokers_that_have_one() -> None:
    conf = {"broker_url": "amqp://guest@localhost//", "broker_transport_options": {}}
    assert findings(conf, limits=TaskLimits(longest_timeout=7200.0)) == [
        Finding(
            "warning",
            "broker_url",
            "RabbitMQ's default consumer_timeout (1800 s) is shorter than the longest a worker "
            "holds a message (7210 s); raise it on the server",
        )
    ]


def test_a_pool_that_cannot_enforce_timeouts_is_named_when_a_task_has_one() -> None:
    assert findings({"worker_pool": "threads"}) == []
    found = findings({"worker_pool": "threads"}, limits=TaskLimits(longest_timeout=10.0))
    assert settings_named(found) == [("warning", "worker_pool")]


def test_a_dispatch_timeout_within_one_reconcile_interval_is_named() -> None:
    found = findings(settings=Settings(dispatch_timeout=20.0, reconcile_interval=30.0))
    assert settings_named(found) == [("warning", "GLEITZEIT_DISPATCH_TIMEOUT")]


def test_a_finding_reads_as_level_setting_and_message() -> None:
    assert str(Finding("error", "x", "why")) == "error: x: why"
