"""The Celery side: the app workers and beat run (``celery -A gleitzeit.worker worker``).

``app`` is configured from the environment and an optional ``celeryconfig`` module,
with the settings gleitzeit's guarantees need. An existing Celery app takes gleitzeit
in with :func:`install` instead. Three tasks: ``gleitzeit.execute`` runs one attempt,
``gleitzeit.reconcile`` runs one reconciliation round (beat sends it every
``reconcile_interval`` seconds), ``gleitzeit.schedules`` fires the schedules whose slot
has come (beat sends it every ``schedule_interval`` seconds). A worker of such an app
logs, as it starts, every Celery setting that would break gleitzeit's guarantees
(:mod:`gleitzeit.checks`).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject

from gleitzeit import process_metrics
from gleitzeit.checks import check_app
from gleitzeit.dispatch import EXECUTE_TASK, Dispatcher
from gleitzeit.errors import StorageFailure
from gleitzeit.executor import Executor
from gleitzeit.presence import WorkerPresence, task_names
from gleitzeit.reconcile import Reconciler
from gleitzeit.scheduler import Scheduler
from gleitzeit.settings import Settings
from gleitzeit.store import Store

log = logging.getLogger(__name__)

#: name of the module with the user's Celery settings, imported when it exists
CONFIG_MODULE_ENV = "GLEITZEIT_CELERY_CONFIG"
RECONCILE_TASK = "gleitzeit.reconcile"
SCHEDULES_TASK = "gleitzeit.schedules"


def celery_defaults(settings: Settings) -> dict[str, Any]:
    """Celery settings that gleitzeit's guarantees rest on (JSON only, late acks, ...)."""
    return {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # must exceed the longest task timeout and retry backoff (redis, SQS)
            "visibility_timeout": 3600,
            # a publisher that finds the broker down fails at once: gleitzeit retries and
            # its circuit breaker decide what comes next (workers reconnect on their own terms)
            "max_retries": 1,
            "interval_start": 0,
        },
        "worker_hijack_root_logger": False,
    }


def _user_config() -> dict[str, Any]:
    name = os.environ.get(CONFIG_MODULE_ENV, "celeryconfig")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return {}
    return {key: getattr(module, key) for key in dir(module) if key.islower() and key[0] != "_"}


_executors: dict[int, Executor] = {}


def configure(app: Celery, settings: Settings) -> None:
    """Tie ``app`` to a store; later attempts on this app use ``settings``."""
    app.conf.gleitzeit_settings = settings
    _executors.pop(id(app), None)


def settings_of(app: Celery) -> Settings:
    settings = app.conf.get("gleitzeit_settings")
    if isinstance(settings, Settings):
        return settings
    return Settings.from_env(broker_url=app.conf.broker_url)


def executor_of(app: Celery) -> Executor:
    """This process's executor for ``app`` (created on first use, after any fork)."""
    executor = _executors.get(id(app))
    if executor is None:
        settings = settings_of(app)
        store = Store.from_settings(settings)
        executor = _executors[id(app)] = Executor(app, store, settings)
    return executor


def reconciler_of(app: Celery) -> Reconciler:
    """A reconciler over ``app``'s store, publishing through this process's executor."""
    executor = executor_of(app)
    settings = executor.settings
    # marks its publishes at once: a round's repairs are in the ledger when it returns
    dispatcher = Dispatcher(
        app, executor.store, breaker_reset_seconds=settings.breaker_reset_seconds
    )
    return Reconciler(executor.store, dispatcher, settings)


def scheduler_of(app: Celery) -> Scheduler:
    """A scheduler over ``app``'s store (this process's executor's), publishing through ``app``."""
    executor = executor_of(app)
    settings = executor.settings
    dispatcher = Dispatcher(
        app, executor.store, breaker_reset_seconds=settings.breaker_reset_seconds
    )
    return Scheduler(executor.store, dispatcher, settings)


def schedules_schedule(settings: Settings) -> dict[str, Any]:
    """The beat schedule entry that fires due schedules every ``schedule_interval``."""
    interval = settings.schedule_interval
    return {
        "task": SCHEDULES_TASK,
        "schedule": interval,
        # a tick nobody picked up within its interval is replaced by the next one, which
        # fires whatever the dropped one would have
        "options": {"expires": interval},
    }


def reconcile_schedule(settings: Settings) -> dict[str, Any]:
    """The beat schedule entry that runs the reconciler every ``reconcile_interval``."""
    interval = settings.reconcile_interval
    return {
        "task": RECONCILE_TASK,
        "schedule": interval,
        # a round nobody picked up within its interval is replaced by the next one
        "options": {"expires": interval},
    }


def install(app: Celery) -> Celery:
    """Register gleitzeit's executor task on an existing Celery app."""

    def execute(self: Any, run_id: str, task_id: str, attempt: int) -> None:
        try:
            executor_of(self.app).execute(run_id, task_id, attempt, worker=self.request.hostname)
        except StorageFailure as exc:
            if not exc.transient:
                raise
            # the database stayed unreachable: hand the message back rather than lose it
            raise Reject(str(exc), requeue=True) from exc

    def reconcile(self: Any) -> str:
        return str(reconciler_of(self.app).run_once())

    def fire_schedules(self: Any) -> str:
        return str(scheduler_of(self.app).tick())

    # shared=False: the executor belongs to this app alone, not to every app
    app.task(
        name=EXECUTE_TASK,
        bind=True,
        shared=False,
        ignore_result=True,
        acks_late=True,
        reject_on_worker_lost=True,
    )(execute)
    app.task(name=RECONCILE_TASK, bind=True, shared=False, ignore_result=True)(reconcile)
    app.task(name=SCHEDULES_TASK, bind=True, shared=False, ignore_result=True)(fire_schedules)
    schedule = dict(app.conf.beat_schedule or {})
    schedule.setdefault(RECONCILE_TASK, reconcile_schedule(settings_of(app)))
    schedule.setdefault(SCHEDULES_TASK, schedules_schedule(settings_of(app)))
    app.conf.beat_schedule = schedule
    return app


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _warn_about_settings(sender: Any = None, **_: Any) -> None:
    """At worker start, log each setting that would break gleitzeit's guarantees."""
    app = getattr(sender, "app", None)
    if app is None or EXECUTE_TASK not in app.tasks:
        return
    for finding in check_app(app, settings_of(app)):
        log.log(finding.log_level, "gleitzeit: %s", finding)


_presences: list[WorkerPresence] = []


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _register_worker(sender: Any = None, **_: Any) -> None:
    """A started worker registers in the store and a thread marks it seen from then on."""
    app = getattr(sender, "app", None)
    if app is None or EXECUTE_TASK not in app.tasks:
        return
    settings = settings_of(app)
    try:
        store = Store.from_settings(settings)
    except StorageFailure as exc:
        log.warning("gleitzeit: worker presence off, no store: %s", exc)
        return
    presence = WorkerPresence(
        store,
        str(sender.hostname),
        task_names(app.tasks),
        interval=settings.worker_heartbeat_interval,
    )
    presence.start()
    _presences.append(presence)
    if settings.worker_metrics_port:
        process_metrics.serve(settings.worker_metrics_port)


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_presence(**_: Any) -> None:
    while _presences:
        _presences.pop().stop()


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _mark_published(**_: Any) -> None:
    """A pool process that stops marks what it published before it goes."""
    for executor in _executors.values():
        executor.marks.flush()
    process_metrics.process_gone(os.getpid())


def create_app(settings: Settings | None = None, *, main: str = "gleitzeit") -> Celery:
    """A Celery app with gleitzeit's defaults, the user's ``celeryconfig`` and the executor."""
    settings = settings or Settings.from_env()
    new_app = Celery(main)
    config = celery_defaults(settings)
    user = _user_config()
    # the user's transport options add to gleitzeit's rather than drop them
    transport = {**config["broker_transport_options"], **user.pop("broker_transport_options", {})}
    config.update(user, broker_transport_options=transport)
    if "CELERY_BROKER_URL" in os.environ:
        config["broker_url"] = os.environ["CELERY_BROKER_URL"]
    new_app.conf.update(config)
    configure(new_app, settings)
    return install(new_app)


app = create_app()
