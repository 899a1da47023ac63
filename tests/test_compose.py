"""docker-compose.yml must name things that exist: apps, task modules, CLI commands, settings."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from celery import Celery

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

#: The settings the app image reads; anything else in its environment is a typo or a stale name.
DOCUMENTED_ENV = frozenset({"GLEITZEIT_DATABASE_URL", "CELERY_BROKER_URL"})


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return shlex.split(command)
    return [str(word) for word in command or []]


def _option_values(argv: list[str], short: str, long: str) -> list[str]:
    """Every value given to ``short``/``long`` (as ``-A x``, ``--app x`` or ``--app=x``)."""
    values = []
    for i, word in enumerate(argv):
        if word in (short, long) and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif word.startswith(long + "="):
            values.append(word.split("=", 1)[1])
    return values


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _dependencies(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: {} for name in depends_on}
    return {name: options or {} for name, options in depends_on.items()}


SERVICES = _services()
#: Services built from the repository's Dockerfile, i.e. running gleitzeit code.
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)
#: The app image's two entry points, and which services use each.
ENTRY_POINTS = ("celery", "gleitzeit")
CELERY_SERVICES = [name for name in APP_SERVICES if _argv(SERVICES[name])[:1] == ["celery"]]
CLI_SERVICES = [name for name in APP_SERVICES if _argv(SERVICES[name])[:1] == ["gleitzeit"]]
INCLUDE_SERVICES = [
    name for name in CELERY_SERVICES if _option_values(_argv(SERVICES[name]), "-I", "--include")
]


@pytest.fixture
def repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The image runs from /app with PYTHONPATH=/app, where examples/ is importable.
    monkeypatch.syspath_prepend(str(REPO_ROOT))


def test_the_compose_file_has_app_services() -> None:
    assert {"migrate", "worker", "beat"} <= set(APP_SERVICES)
    assert CELERY_SERVICES
    assert CLI_SERVICES


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_a_known_entry_point(name: str) -> None:
    argv = _argv(SERVICES[name])

    assert argv, f"service {name!r} runs the app image without a command"
    assert argv[0] in ENTRY_POINTS, f"service {name!r} runs {argv[0]!r}, not one of {ENTRY_POINTS}"


@pytest.mark.parametrize("name", CELERY_SERVICES)
def test_celery_app_modules_expose_a_celery_app(name: str, repo_on_path: None) -> None:
    argv = _argv(SERVICES[name])
    apps = _option_values(argv, "-A", "--app")
    assert apps, f"service {name!r} runs celery without -A"
    for spec in apps:
        module_name, _, attribute = spec.partition(":")
        module = importlib.import_module(module_name)
        app = getattr(module, attribute or "app", None)
        assert isinstance(app, Celery), f"{spec} (service {name!r}) is not a celery.Celery app"


@pytest.mark.parametrize("name", INCLUDE_SERVICES)
def test_included_task_modules_import(name: str, repo_on_path: None) -> None:
    argv = _argv(SERVICES[name])
    for value in _option_values(argv, "-I", "--include"):
        for module_name in filter(None, value.split(",")):
            importlib.import_module(module_name)


@pytest.mark.parametrize("name", CLI_SERVICES)
def test_gleitzeit_cli_commands_exist(name: str) -> None:
    argv = _argv(SERVICES[name])
    from gleitzeit.cli import main

    command: click.Command = main
    ctx = click.Context(main, info_name="gleitzeit")
    for word in argv[1:]:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, word)
        assert sub is not None, f"`{shlex.join(argv)}` (service {name!r}): no command {word!r}"
        ctx = click.Context(sub, parent=ctx, info_name=word)
        command = sub
    assert not isinstance(command, click.Group), (
        f"`{shlex.join(argv)}` (service {name!r}) names a command group, not a command"
    )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_uses_documented_settings_only(name: str) -> None:
    env = _environment(SERVICES[name])
    unknown = sorted(
        var for var in env if var not in DOCUMENTED_ENV and not var.startswith("GLEITZEIT_")
    )
    assert not unknown, f"service {name!r} sets undocumented variables {unknown}"
    missing = sorted(DOCUMENTED_ENV - set(env))
    assert not missing, f"service {name!r} lacks {missing}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_names_existing_services(name: str) -> None:
    missing = sorted(set(_dependencies(SERVICES[name])) - set(SERVICES))
    assert not missing, f"service {name!r} depends on unknown services {missing}"


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_workers_and_beat_start_after_a_successful_migration(name: str) -> None:
    dependencies = _dependencies(SERVICES[name])

    assert dependencies["migrate"].get("condition") == "service_completed_successfully"
    assert dependencies["postgres"].get("condition") == "service_healthy"


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD-SHELL":
        # the shell expands variables; compose turns $$ into $ before
        return shlex.split(" ".join(rest).replace("$$", "$"))
    assert kind == "CMD", f"healthcheck test {test!r} is neither CMD nor CMD-SHELL"
    return [str(word) for word in rest]


@pytest.mark.parametrize(("name", "part"), [("worker", "workers"), ("beat", "reconciler")])
def test_workers_and_beat_are_checked_by_gleitzeit_health(name: str, part: str) -> None:
    from gleitzeit.cli import health

    argv = _healthcheck_argv(SERVICES[name])

    assert argv[:2] == ["gleitzeit", "health"], f"service {name!r} is not checked by it"
    # parsed as the command would parse it: every option and value exists
    ctx = health.make_context("health", argv[2:])
    assert set(ctx.params["only"]) == {"store", "broker", part}
    if name == "worker":
        assert ctx.params["worker"] == "celery@${HOSTNAME}"
    assert SERVICES[name]["healthcheck"]["start_period"]


def test_the_deployment_has_one_metrics_endpoint() -> None:
    (name,) = [n for n in CLI_SERVICES if _argv(SERVICES[n])[1:2] == ["metrics"]]
    argv = _argv(SERVICES[name])

    assert _option_values(argv, "--port", "--port") == ["9808"]
    assert SERVICES[name]["ports"] == ["127.0.0.1:9808:9808"]
