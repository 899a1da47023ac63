"""The ``gleitzeit`` command line."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import click

from gleitzeit.checks import Finding, check_app
from gleitzeit.client import Client, Run
from gleitzeit.errors import (
    GleitzeitError,
    StorageFailure,
    StoreNotReady,
    WorkflowFailed,
    WorkflowValidationError,
)
from gleitzeit.loading import import_modules, load_workflow
from gleitzeit.resolver import DependencyResolver
from gleitzeit.settings import Settings
from gleitzeit.states import FINAL_RUN_STATES, RunState
from gleitzeit.store import Store
from gleitzeit.strategies import FROM_FAILURE, RETRY_STRATEGIES
from gleitzeit.workflow import Workflow


def _parse_inputs(pairs: Sequence[str], as_json: str | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if as_json:
        try:
            given = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--inputs-json") from exc
        if not isinstance(given, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--inputs-json")
        inputs.update(given)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        try:
            inputs[name] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[name] = raw
    return inputs


#: where a person gives a run's inputs, for a workflow that references one not given
_INPUTS_HINT = (
    "give inputs with -i NAME=VALUE or --inputs-json '{...}' "
    "(a .py workflow file may also define a module-level dict 'inputs')"
)


@contextlib.contextmanager
def _hint_inputs(workflow: Workflow, inputs: Mapping[str, Any]) -> Iterator[None]:
    """Add where inputs are given to a validation error about inputs that are not."""
    try:
        yield
    except WorkflowValidationError as exc:
        if not DependencyResolver(workflow).input_names() <= set(inputs):
            raise WorkflowValidationError(
                exc.problems, workflow=exc.workflow, hint=_INPUTS_HINT
            ) from exc
        raise


def _registered_tasks() -> set[str]:
    """Names of the Celery tasks a worker of gleitzeit's app would have, after ``-I``."""
    from gleitzeit.worker import app

    return set(app.tasks.keys())


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _show_progress(run: Run, *, interval: float = 0.2) -> None:
    """A progress bar of finished tasks until the run ends."""
    total = run.progress.tasks_total
    done = 0
    with click.progressbar(length=total, label=f"run {run.id[:8]}", file=sys.stderr) as bar:
        while True:
            progress = run.progress
            finished = progress.tasks_total - progress.tasks_unfinished
            bar.update(finished - done)
            done = finished
            if progress.state in FINAL_RUN_STATES:
                return
            time.sleep(interval)


def _finish(run: Run, *, only: Sequence[str] | None = None) -> None:
    """Print results (of the tasks in ``only``, if given; exit 0) or what failed (exit 1)."""
    try:
        results = run.wait()
        _print_json(results if only is None else {k: results[k] for k in only if k in results})
    except WorkflowFailed as exc:
        click.echo(f"run {run.id} ended {exc.status}", err=True)
        for task_id, error in exc.errors.items():
            click.echo(f"  {task_id}: {error}", err=True)
        sys.exit(1)


#: whether an error shows its traceback (``gleitzeit --debug``, ``GLEITZEIT_DEBUG=1``)
_debug = False


@click.group()
@click.version_option(package_name="gleitzeit")
@click.option(
    "--debug",
    is_flag=True,
    envvar="GLEITZEIT_DEBUG",
    help="Show the traceback of an error (also GLEITZEIT_DEBUG=1).",
)
def main(debug: bool) -> None:
    """Durable task graphs for Celery."""
    global _debug
    _debug = debug


def _looking() -> Client:
    """A client for commands about runs that exist: it never creates or migrates a store."""
    return Client(create_store=False)


def _resolved(prefix: str) -> tuple[Client, str]:
    """A client for an existing store and the full id of the run ``prefix`` names."""
    client = _looking()
    return client, client.resolve_run_id(prefix)


_include = click.option(
    "-I", "--include", multiple=True, help="Module(s) with tasks to import (comma-separated)."
)
_inputs = click.option("-i", "--input", "pairs", multiple=True, help="An input, NAME=VALUE.")
_inputs_json = click.option("--inputs-json", help="Inputs as a JSON object.")
_db = click.option(
    "--database", "--db", "database_url", help="Store URL (default GLEITZEIT_DATABASE_URL)."
)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_include
@_inputs
@_inputs_json
@click.option(
    "--database",
    "--db",
    "database_url",
    help="Store URL [default: sqlite:///gleitzeit.db; GLEITZEIT_DATABASE_URL is not read].",
)
@click.option(
    "--broker",
    "broker_url",
    help="A broker to use instead of memory [CELERY_BROKER_URL is not read].",
)
@click.option("--concurrency", type=int, help="Threads of the in-process worker.")
@click.option("--key", help="Idempotency key of the run.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--all", "all_results", is_flag=True, help="Print every task's result.")
def run(
    file: str,
    include: Sequence[str],
    pairs: Sequence[str],
    inputs_json: str | None,
    database_url: str | None,
    broker_url: str | None,
    concurrency: int | None,
    key: str | None,
    quiet: bool,
    all_results: bool,
) -> None:
    """Run FILE's workflow to the end on this machine, with no server (embedded).

    Its messages stay in this process and its store is ./gleitzeit.db, whatever
    CELERY_BROKER_URL and GLEITZEIT_DATABASE_URL say; --broker and --database choose others.
    Prints the results of the final tasks (those nothing depends on) as JSON.
    """
    from gleitzeit.embedded import embedded_client, queues_of

    import_modules(list(include))
    loaded = load_workflow(file)
    inputs = {**loaded.inputs, **_parse_inputs(pairs, inputs_json)}
    with embedded_client(
        database_url,
        broker_url=broker_url,
        concurrency=concurrency,
        queues=queues_of(loaded.workflow),
    ) as client:
        with _hint_inputs(loaded.workflow, inputs):
            started = client.submit(
                loaded.workflow, inputs, key=key, registered=client.app.tasks.keys()
            )
        click.echo(f"run {started.id} ({loaded.workflow.name}) started", err=True)
        if not quiet:
            _show_progress(started)
        graph = DependencyResolver(loaded.workflow)
        _finish(started, only=None if all_results else graph.leaves())


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_include
@_inputs
@_inputs_json
def validate(
    file: str, include: Sequence[str], pairs: Sequence[str], inputs_json: str | None
) -> None:
    """Check FILE's workflow and print every problem (exit 1 if there is one).

    Refuses what submit and run refuse: every input the workflow references must be given
    (-i, --inputs-json, or the file's own 'inputs'); with -I, every task name must be a
    Celery task registered once those modules are imported (without -I, the workers'
    tasks are not known here and names are not checked).
    """
    import_modules(list(include))
    loaded = load_workflow(file)
    inputs = {**loaded.inputs, **_parse_inputs(pairs, inputs_json)}
    registered = _registered_tasks() if include else None
    with _hint_inputs(loaded.workflow, inputs):
        loaded.workflow.validate(inputs, registered=registered)
    click.echo(
        f"{file}: workflow {loaded.workflow.name!r} is valid ({len(loaded.workflow.specs)} tasks)"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_include
@_inputs
@_inputs_json
@click.option("--key", help="Idempotency key of the run.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the run and print its results.")
def submit(
    file: str,
    include: Sequence[str],
    pairs: Sequence[str],
    inputs_json: str | None,
    key: str | None,
    wait_: bool,
) -> None:
    """Submit FILE's workflow to the workers (GLEITZEIT_DATABASE_URL, CELERY_BROKER_URL)."""
    import_modules(list(include))
    loaded = load_workflow(file)
    inputs = {**loaded.inputs, **_parse_inputs(pairs, inputs_json)}
    client = Client()
    with _hint_inputs(loaded.workflow, inputs):
        started = client.submit(loaded.workflow, inputs, key=key)
    click.echo(started.id)
    if wait_:
        _finish(started)


@main.command()
@click.argument("run_id")
def status(run_id: str) -> None:
    """Print a run's state and its tasks' states (RUN_ID: the id, or its start)."""
    client, run_id = _resolved(run_id)
    run_ = client.get(run_id)
    record = run_.record
    click.echo(f"run {record.id} {record.name}: {record.state.value}")
    for task_id, task in run_.tasks.items():
        line = f"  {task_id:<24} {task.state.value:<10} attempt {task.attempt}"
        click.echo(line + (f"  {task.error}" if task.error else ""))


@main.command()
@click.argument("run_id")
def watch(run_id: str) -> None:
    """Show a live progress bar of a run until it ends."""
    client, run_id = _resolved(run_id)
    run_ = client.get(run_id)
    _show_progress(run_)
    click.echo(f"run {run_id} {run_.status}")


@main.command("list")
@click.option("--status", "status_", type=click.Choice([s.value for s in RunState]))
@click.option("--name")
@click.option("--limit", type=int, default=50, show_default=True)
def list_runs(status_: str | None, name: str | None, limit: int) -> None:
    """List the newest runs."""
    for record in _looking().runs(status=status_, name=name, limit=limit):
        done = record.tasks_total - record.tasks_unfinished
        click.echo(
            f"{record.id}  {record.name:<24} {record.state.value:<10} "
            f"{done}/{record.tasks_total} tasks"
        )


@main.command()
@click.argument("run_id")
def history(run_id: str) -> None:
    """Print a run's events in order, with who or what caused each."""
    client, run_id = _resolved(run_id)
    for event in client.get(run_id).history():
        stamp = time.strftime("%H:%M:%S", time.localtime(event.created_at))
        where = f" {event.task_id}" if event.task_id else ""
        where += f"#{event.attempt}" if event.task_id and event.attempt else ""
        data = dict(event.data or {})
        by = data.pop("by", None) or data.pop("worker", None)
        line = f"{stamp} {event.type}{where}" + (f"  by {by}" if by else "")
        click.echo(line + (f"  {json.dumps(data, default=str)}" if data else ""))


@main.command()
@click.argument("run_id")
@click.option(
    "--strategy",
    type=click.Choice(RETRY_STRATEGIES),
    default=FROM_FAILURE,
    show_default=True,
    help="from_failure: rerun failed, blocked and skipped-by-failure tasks and their "
    "dependents; from_start: rerun all; skip_failed: skip failed tasks and go on.",
)
@_inputs
@_inputs_json
@click.option(
    "--file",
    "workflow_file",
    type=click.Path(dir_okay=False),
    help="The workflow's definition now; a retry against a changed one needs --force.",
)
@_include
@click.option("--force", is_flag=True, help="Rerun the tasks a changed --file changes.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the run and print its results.")
def retry(
    run_id: str,
    strategy: str,
    pairs: Sequence[str],
    inputs_json: str | None,
    workflow_file: str | None,
    include: Sequence[str],
    force: bool,
    wait_: bool,
) -> None:
    """Run an ended run again, in place. Inputs given replace those of the same name."""
    import_modules(list(include))
    client, run_id = _resolved(run_id)
    given = _parse_inputs(pairs, inputs_json)
    inputs = {**client.get(run_id).record.inputs, **given} if given else None
    workflow = load_workflow(workflow_file).workflow if workflow_file else None
    run_ = client.retry(run_id, strategy, inputs=inputs, workflow=workflow, force=force)
    click.echo(f"run {run_id} retried ({strategy}): {run_.status}")
    if wait_:
        _finish(run_)


@main.command()
@click.argument("run_id")
@click.option(
    "--no-terminate",
    is_flag=True,
    help="Let running tasks run on (their outcomes are ignored) instead of SIGTERM.",
)
def cancel(run_id: str, no_terminate: bool) -> None:
    """Cancel a run: nothing more starts, queued messages are revoked."""
    client, run_id = _resolved(run_id)
    changed = client.cancel(run_id, terminate=not no_terminate)
    click.echo(f"run {run_id} " + ("cancelled" if changed else "was cancelled already"))


@main.command()
@click.argument("run_id")
def pause(run_id: str) -> None:
    """Pause a run: nothing more is dispatched or started; running tasks finish."""
    client, run_id = _resolved(run_id)
    changed = client.pause(run_id)
    click.echo(f"run {run_id} " + ("paused" if changed else "was paused already"))


@main.command()
@click.argument("run_id")
def resume(run_id: str) -> None:
    """Resume a paused run."""
    client, run_id = _resolved(run_id)
    changed = client.resume(run_id)
    click.echo(f"run {run_id} " + ("resumed" if changed else "was running already"))


@main.command()
@click.option("--once", is_flag=True, help="One round, then exit.")
@click.option(
    "--interval",
    type=float,
    help="Seconds between rounds [default: GLEITZEIT_RECONCILE_INTERVAL, 30].",
)
def reconcile(once: bool, interval: float | None) -> None:
    """Repair stuck runs: what beat's gleitzeit.reconcile does, from the command line."""
    client = Client()
    pause = interval or client.settings.reconcile_interval
    while True:
        try:
            click.echo(f"reconciled: {client.reconcile()}")
        except StorageFailure as exc:
            if once or not exc.transient:
                raise
            click.echo(f"store unreachable, trying again in {pause:g} s: {exc}", err=True)
        if once:
            return
        time.sleep(pause)


@main.command()
@_include
@click.option(
    "-A",
    "--app",
    "app_path",
    default="gleitzeit.worker:app",
    show_default=True,
    help="The Celery app workers run, as module:attribute.",
)
def check(include: Sequence[str], app_path: str) -> None:
    """Report Celery settings that break gleitzeit's guarantees; reach store and broker."""
    from gleitzeit.worker import settings_of

    import_modules(list(include))
    app = _load_app(app_path)
    settings = settings_of(app)
    findings = check_app(app, settings)
    for finding in findings:
        click.echo(str(finding))
    problems = [f for f in findings if f.level == "error"]
    problems += _reach(app, settings)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) break gleitzeit's guarantees")
    click.echo("ok: settings keep gleitzeit's guarantees; store and broker answer")


def _load_app(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute or "app")


def _reach(app: Any, settings: Settings) -> list[Finding]:
    """Findings for a store or broker that does not answer."""
    found = []
    try:
        Store.from_settings(settings, existing=True)  # a check creates and migrates nothing
    except StoreNotReady as exc:
        found.append(Finding("error", "GLEITZEIT_DATABASE_URL", str(exc)))
    except StorageFailure as exc:
        found.append(Finding("error", "GLEITZEIT_DATABASE_URL", f"store unreachable: {exc}"))
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        found.append(Finding("error", "broker_url", f"broker unreachable: {exc}"))
    for finding in found:
        click.echo(str(finding))
    return found


@main.group()
def db() -> None:
    """The store's schema."""


@db.command()
@_db
def upgrade(database_url: str | None) -> None:
    """Create or migrate the store's tables to the newest schema."""
    store = Store.open(Settings.from_env(database_url=database_url).database_url)
    click.echo(f"store at {store.location} is up to date")


def _message(exc: Exception) -> str:
    """An error as the one line (or, for an invalid workflow, the list) a person reads."""
    if isinstance(exc, WorkflowValidationError):
        return str(exc)
    if isinstance(exc, GleitzeitError):
        return f"error: {exc}"
    # not translated where it arose: say what it is, and how to see where
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {text} (gleitzeit --debug shows where)"


def entry() -> None:
    """The console script: an error is one clear message and exit status 1; with
    ``--debug`` (or ``GLEITZEIT_DEBUG=1``) its traceback comes first."""
    try:
        main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _debug:
            traceback.print_exception(exc)
        click.echo(_message(exc), err=True)
        sys.exit(1)
