"""Celery settings that would break gleitzeit's guarantees, found before they bite.

:func:`check_settings` is pure: Celery's settings and what is known of the tasks in,
findings out. :func:`check_app` reads them off a Celery app. Workers log the findings
as they start; ``gleitzeit check`` prints them and fails on errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gleitzeit.dispatch import EXECUTE_TASK, HARD_LIMIT_GRACE
from gleitzeit.settings import Settings
from gleitzeit.workflow import known_task_defaults

#: kombu's Redis and SQS transports redeliver unacknowledged messages after this long
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
#: RabbitMQ closes the channel of a consumer that holds a message this long (its default)
RABBITMQ_CONSUMER_TIMEOUT = 1800.0
_VISIBILITY_TRANSPORTS = ("redis", "rediss", "sqs", "sentinel")
_POOLS_WITHOUT_TIME_LIMITS = ("threads", "solo", "gevent", "eventlet")


@dataclass(frozen=True)
class Finding:
    """One setting that breaks (``error``) or weakens (``warning``) a guarantee."""

    level: str
    setting: str
    message: str

    @property
    def log_level(self) -> int:
        return logging.ERROR if self.level == "error" else logging.WARNING

    def __str__(self) -> str:
        return f"{self.level}: {self.setting}: {self.message}"


@dataclass(frozen=True)
class TaskLimits:
    """What the registered tasks may ask of the broker: the longest run and retry wait."""

    longest_timeout: float | None = None
    longest_backoff: float = 0.0


def check_settings(
    conf: Mapping[str, Any],
    *,
    executor: Mapping[str, Any] | None,
    limits: TaskLimits,
    settings: Settings,
) -> list[Finding]:
    """Findings for Celery settings ``conf`` and the executor task's options."""
    findings = [*_executor_findings(executor), *_message_findings(conf)]
    findings += _broker_findings(conf, limits)
    findings += _schedule_findings(conf, limits, settings)
    return findings


def _executor_findings(executor: Mapping[str, Any] | None) -> list[Finding]:
    if executor is None:
        return [
            Finding(
                "error",
                EXECUTE_TASK,
                "not registered on this app: call gleitzeit.worker.install(app)",
            )
        ]
    found = []
    if not executor.get("acks_late"):
        found.append(
            Finding(
                "error",
                "task_acks_late",
                f"late acks are off for {EXECUTE_TASK}: a message is acknowledged before its "
                "task runs, and lost with a worker that dies",
            )
        )
    if not executor.get("reject_on_worker_lost"):
        found.append(
            Finding(
                "warning",
                "task_reject_on_worker_lost",
                "off: the message of a killed worker process is acknowledged, not redelivered; "
                "its task waits for its lease to run out and the reconciler",
            )
        )
    return found


def _message_findings(conf: Mapping[str, Any]) -> list[Finding]:
    found = []
    accepted = {str(kind).rsplit("/", 1)[-1] for kind in conf.get("accept_content") or ()}
    unsafe = sorted(accepted - {"json"})
    if unsafe:
        found.append(
            Finding(
                "error",
                "accept_content",
                f"accepts {', '.join(unsafe)}: gleitzeit's messages are JSON only, and "
                "pickle lets whoever can publish run code on the worker",
            )
        )
    if conf.get("task_always_eager"):
        found.append(
            Finding(
                "error",
                "task_always_eager",
                "on: tasks run in the caller, not on workers; nothing is durable",
            )
        )
    prefetch = conf.get("worker_prefetch_multiplier") or 0
    if prefetch > 1:
        found.append(
            Finding(
                "warning",
                "worker_prefetch_multiplier",
                f"{prefetch}: each worker process holds {prefetch} messages, which wait behind "
                "a long task instead of going to an idle worker; set 1",
            )
        )
    return found


def _broker_findings(conf: Mapping[str, Any], limits: TaskLimits) -> list[Finding]:
    found = []
    scheme = str(conf.get("broker_url") or "").split("://", 1)[0].split("+", 1)[0]
    longest_hold = max((limits.longest_timeout or 0.0) + HARD_LIMIT_GRACE, limits.longest_backoff)
    if scheme in _VISIBILITY_TRANSPORTS:
        options = conf.get("broker_transport_options") or {}
        visibility = float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
        if visibility <= longest_hold:
            found.append(
                Finding(
                    "error",
                    "broker_transport_options.visibility_timeout",
                    f"{visibility:g} s is not longer than the longest a worker holds a message "
                    f"({longest_hold:g} s: task timeout plus {HARD_LIMIT_GRACE:g} s, or retry "
                    "backoff): the broker delivers it again while it runs or waits",
                )
            )
    if scheme in ("amqp", "amqps", "pyamqp") and longest_hold > RABBITMQ_CONSUMER_TIMEOUT:
        found.append(
            Finding(
                "warning",
                "broker_url",
                f"RabbitMQ's default consumer_timeout ({RABBITMQ_CONSUMER_TIMEOUT:g} s) is "
                f"shorter than the longest a worker holds a message ({longest_hold:g} s); "
                "raise it on the server",
            )
        )
    return found


def _schedule_findings(
    conf: Mapping[str, Any], limits: TaskLimits, settings: Settings
) -> list[Finding]:
    found = []
    pool = str(conf.get("worker_pool") or "prefork")
    if limits.longest_timeout and pool in _POOLS_WITHOUT_TIME_LIMITS:
        found.append(
            Finding(
                "warning",
                "worker_pool",
                f"the {pool} pool does not enforce time limits: task timeouts are not applied",
            )
        )
    schedule = conf.get("beat_schedule") or {}
    if not any(entry.get("task") == "gleitzeit.reconcile" for entry in schedule.values()):
        found.append(
            Finding(
                "warning",
                "beat_schedule",
                "no entry runs gleitzeit.reconcile: stuck runs are repaired only by "
                "`gleitzeit reconcile`",
            )
        )
    if settings.dispatch_timeout <= settings.reconcile_interval:
        found.append(
            Finding(
                "warning",
                "GLEITZEIT_DISPATCH_TIMEOUT",
                f"{settings.dispatch_timeout:g} s is not longer than the reconcile interval "
                f"({settings.reconcile_interval:g} s): queued tasks may be dispatched again "
                "while their first message waits in the queue",
            )
        )
    return found


def task_limits(tasks: Iterable[Any], conf: Mapping[str, Any]) -> TaskLimits:
    """The longest timeout and backoff among registered tasks and Celery's time limits."""
    timeouts = [float(conf["task_time_limit"])] if conf.get("task_time_limit") else []
    for task in tasks:
        limit = getattr(task, "time_limit", None)
        if isinstance(limit, (int, float)) and limit:
            timeouts.append(float(limit))
    backoffs = [0.0]
    for defaults in known_task_defaults():
        if defaults.timeout:
            timeouts.append(defaults.timeout)
        if defaults.retries:
            backoffs.append(defaults.backoff.cap)
    return TaskLimits(max(timeouts) if timeouts else None, max(backoffs))


def check_app(app: Any, settings: Settings) -> list[Finding]:
    """Findings for a Celery app with gleitzeit installed."""
    conf = app.conf
    execute = app.tasks.get(EXECUTE_TASK)
    executor = None
    if execute is not None:
        executor = {
            "acks_late": execute.acks_late,
            "reject_on_worker_lost": execute.reject_on_worker_lost,
        }
    limits = task_limits(app.tasks.values(), conf)
    return check_settings(conf, executor=executor, limits=limits, settings=settings)
