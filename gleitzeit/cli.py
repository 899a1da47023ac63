"""The ``gleitzeit`` command line."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from gleitzeit import display
from gleitzeit.checks import Finding, check_app
from gleitzeit.client import Client, Run
from gleitzeit.errors import (
    GleitzeitError,
    StorageFailure,
    StoreNotReady,
    WorkflowFailed,
    WorkflowValidationError,
)
from gleitzeit.graph import FORMATS as GRAPH_FORMATS
from gleitzeit.graph import check_format
from gleitzeit.health import CHECKS, check_health
from gleitzeit.loading import import_modules, load_workflow
from gleitzeit.metrics import serve_metrics
from gleitzeit.resolver import DependencyResolver
from gleitzeit.settings import Settings
from gleitzeit.states import FINAL_RUN_STATES, RunState
from gleitzeit.store import Store
from gleitzeit.store.records import FinishedTask, RunProgress
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


#: how far back (seconds) each look at a run reads again: a PostgreSQL transaction may
#: commit after a later one, with the earlier clock it stamped its task's end with
_LOOK_BACK = 5.0


def _ended(run: Run, *, interval: float = 0.25) -> Iterator[tuple[RunProgress, list[FinishedTask]]]:
    """The run's state and the tasks that ended since the last look, each time something
    changed, until the run ends. Each poll reads the run's row; only when it moved are the
    tasks that ended since the last look (a cursor on their end) read."""
    seen: set[FinishedTask] = set()
    since = 0.0
    last: tuple[object, ...] = ()
    delay = 0.01
    while True:
        progress = run.progress
        if (progress.state, progress.tasks_unfinished, progress.tasks_total) != last:
            progress, found = run.client.store.get_finished(run.id, since)
            last = (progress.state, progress.tasks_unfinished, progress.tasks_total)
            yield progress, [f for f in found if f not in seen]
            seen.update(found)
            if found:
                since = max(since, found[-1].finished_at - _LOOK_BACK)
        if progress.state in FINAL_RUN_STATES:
            return
        time.sleep(delay)
        delay = min(delay * 2, interval)


def _show_progress(run: Run) -> None:
    """Follow the run to its end on stderr: on a terminal, a bar of ended tasks that names
    the last; otherwise a line per ended task (``12:01:02 extract succeeded (1/3)``)."""
    if sys.stderr.isatty():
        with click.progressbar(
            length=run.progress.tasks_total,
            label=f"run {run.id[:8]}",
            file=sys.stderr,
            show_pos=True,
            item_show_func=lambda item: item,
        ) as bar:
            for progress, ended in _ended(run):
                bar.length = progress.tasks_total
                for task in ended:
                    bar.update(1, current_item=f"{task.task_id} {task.state.value}")
        return
    done = 0
    for progress, ended in _ended(run):
        for task in ended:
            done += 1
            click.echo(
                f"{display.clock(task.finished_at)} {task.task_id} {task.state.value}"
                f" ({done}/{progress.tasks_total})",
                err=True,
            )


def _finish(run: Run, *, all_results: bool) -> None:
    """Print the results of the run's final tasks (those nothing depends on; every task's
    with ``all_results``) as JSON and exit 0, or what failed and exit 1."""
    try:
        results = run.wait()
        if not all_results:
            graph = Workflow.from_dict(run.record.graph, source=f"run {run.id}")
            results = {k: results[k] for k in DependencyResolver(graph).leaves() if k in results}
        _print_json(results)
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
_quiet = click.option(
    "--quiet", is_flag=True, help="No progress (a bar, or a line per ended task) on stderr."
)
_all = click.option(
    "--all",
    "all_results",
    is_flag=True,
    help="Print every task's result, not only the final tasks' (those nothing depends on).",
)


def _needs_wait(wait_: bool, all_results: bool) -> None:
    if all_results and not wait_:
        raise click.UsageError("--all prints results: it needs --wait")


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
@_quiet
@_all
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
        _finish(started, all_results=all_results)


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
    count = len(loaded.workflow.specs)
    click.echo(
        f"{file}: workflow {loaded.workflow.name!r} is valid "
        f"({count} task{'' if count == 1 else 's'})"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_include
@_inputs
@_inputs_json
@click.option("--key", help="Idempotency key of the run.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the run and print its results.")
@_all
@_quiet
def submit(
    file: str,
    include: Sequence[str],
    pairs: Sequence[str],
    inputs_json: str | None,
    key: str | None,
    wait_: bool,
    all_results: bool,
    quiet: bool,
) -> None:
    """Submit FILE's workflow to the workers (GLEITZEIT_DATABASE_URL, CELERY_BROKER_URL).

    With --wait, prints the results of the final tasks as JSON, as ``run`` does.
    """
    _needs_wait(wait_, all_results)
    import_modules(list(include))
    loaded = load_workflow(file)
    inputs = {**loaded.inputs, **_parse_inputs(pairs, inputs_json)}
    client = Client()
    with _hint_inputs(loaded.workflow, inputs):
        started = client.submit(loaded.workflow, inputs, key=key)
    click.echo(started.id)
    if wait_:
        if not quiet:
            _show_progress(started)
        _finish(started, all_results=all_results)


_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@main.command()
@click.argument("run_id")
@click.option("--task", "task_id", help="One task: each of its attempts, with tracebacks.")
@_json
def status(run_id: str, task_id: str | None, as_json: bool) -> None:
    """Print a run and its tasks: state, attempts, time taken, result or error."""
    client, run_id = _resolved(run_id)
    store = client.store
    record = store.get_run(run_id)
    if task_id is not None:
        found = store.get_tasks(run_id)
        if task_id not in found:
            raise click.BadParameter(
                f"run {run_id} has no task {task_id!r} (it has: {', '.join(sorted(found))})",
                param_hint="--task",
            )
        task = found[task_id]
        if as_json:
            _print_json(display.as_json(task))
        else:
            click.echo("\n".join(display.task_lines(run_id, task)))
        return
    found = store.get_tasks(run_id, with_attempts=False)
    if as_json:
        _print_json({"run": display.as_json(record), "tasks": display.as_json(found)})
    else:
        click.echo("\n".join(display.run_lines(record, found)))


@main.command()
@click.argument("run_id")
def watch(run_id: str) -> None:
    """Follow a run until it ends: a progress bar on a terminal, else a line per ended task."""
    client, run_id = _resolved(run_id)
    run_ = client.get(run_id)
    _show_progress(run_)
    click.echo(f"run {run_id} {run_.status}")


@main.command("list")
@click.option("--status", "status_", type=click.Choice([s.value for s in RunState]))
@click.option("--name")
@click.option("--limit", type=int, default=50, show_default=True)
@_json
def list_runs(status_: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """List the newest runs: state, tasks done, when submitted and ended, time taken."""
    found = _looking().runs(status=status_, name=name, limit=limit)
    if as_json:
        _print_json(display.as_json(found))
    elif found:
        click.echo("\n".join(display.runs_lines(found)))


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


_WORKFLOW_SUFFIXES = (".py", ".json", ".yaml", ".yml")


@main.command()
@click.argument("target", metavar="RUN|FILE")
@click.option(
    "-f",
    "--format",
    "format_",
    default="mermaid",
    show_default=True,
    help=f"One of {', '.join(GRAPH_FORMATS)}; svg needs Graphviz's dot.",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write to PATH, not standard output."
)
@_include
@_db
def graph(
    target: str,
    format_: str,
    output: str | None,
    include: Sequence[str],
    database_url: str | None,
) -> None:
    """Draw a run's graph colored by its tasks' states (RUN: a run id), or a workflow's
    (FILE: as `validate` takes it)."""
    check_format(format_)
    if Path(target).exists() or Path(target).suffix.lower() in _WORKFLOW_SUFFIXES:
        import_modules(list(include))
        try:
            loaded = load_workflow(target)
        except WorkflowValidationError as exc:  # not a workflow: one line, as every error
            click.echo(f"error: {'; '.join(exc.problems)}", err=True)
            sys.exit(1)
        drawn = loaded.workflow.graph(format_)
    else:
        client = Client(database_url=database_url, create_store=False)
        drawn = client.graph(client.resolve_run_id(target), format=format_)
    if output is None:
        click.echo(drawn, nl=False)
        return
    try:
        Path(output).write_text(drawn)
    except OSError as exc:
        click.echo(f"error: cannot write {output}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    click.echo(f"{output}: {format_} graph of {target}", err=True)


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
    help="The workflow's definition now: a retry against changed params or options needs "
    "--force; a changed shape needs a new run (gleitzeit submit).",
)
@_include
@click.option("--force", is_flag=True, help="Rerun the tasks a changed --file changes.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the run and print its results.")
@_all
@_quiet
def retry(
    run_id: str,
    strategy: str,
    pairs: Sequence[str],
    inputs_json: str | None,
    workflow_file: str | None,
    include: Sequence[str],
    force: bool,
    wait_: bool,
    all_results: bool,
    quiet: bool,
) -> None:
    """Run an ended run again, in place. Inputs given replace those of the same name.

    With --wait, prints the results of the final tasks as JSON, as ``run`` does.
    """
    _needs_wait(wait_, all_results)
    import_modules(list(include))
    client, run_id = _resolved(run_id)
    given = _parse_inputs(pairs, inputs_json)
    inputs = {**client.get(run_id).record.inputs, **given} if given else None
    workflow = load_workflow(workflow_file).workflow if workflow_file else None
    run_ = client.retry(run_id, strategy, inputs=inputs, workflow=workflow, force=force)
    click.echo(f"run {run_id} retried ({strategy}): {run_.status}")
    if wait_:
        if not quiet:
            _show_progress(run_)
        _finish(run_, all_results=all_results)


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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print every check as JSON.")
@click.option(
    "--check",
    "only",
    multiple=True,
    type=click.Choice(CHECKS),
    help="Check only this part (repeatable); every part by default.",
)
@click.option("--worker", help="The workers check asks for this worker (its Celery hostname).")
def health(as_json: bool, only: Sequence[str], worker: str | None) -> None:
    """Is the deployment well? Store and schema, broker, reconciler, workers (exit 0/1)."""
    found = check_health(Settings.from_env(), only=only or None, worker=worker)
    if as_json:
        _print_json(found.to_dict())
    else:
        for part in found.checks:
            state = "ok  " if part.ok else "FAIL"
            click.echo(f"{state} {part.name:<10} {part.seconds * 1000:7.1f} ms  {part.detail}")
    if not found.ok:
        sys.exit(1)


@main.command()
@click.option("--port", type=int, default=9808, show_default=True, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def metrics(port: int, host: str) -> None:
    """Serve the deployment's Prometheus metrics, read from the store at each scrape."""
    settings = Settings.from_env()
    try:
        server = serve_metrics(settings, host=host, port=port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    click.echo(f"serving metrics on http://{host}:{server.port}/metrics", err=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


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


@main.group()
def schedule() -> None:
    """Workflows fired at the slots of a cron expression (beat's gleitzeit.schedules)."""


@schedule.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--cron", required=True, help="Cron expression, e.g. '0 3 * * *'.")
@click.option("--timezone", "tz", default="UTC", show_default=True, help="IANA time zone.")
@_include
@_inputs
@_inputs_json
@click.option("--catchup", is_flag=True, help="Fire every slot missed while beat was down.")
@click.option("--name", help="The schedule's name [default: the workflow's name].")
@click.option("--key", help="Run keys' prefix [default: schedule:NAME].")
def schedule_add(
    file: str,
    cron: str,
    tz: str,
    include: Sequence[str],
    pairs: Sequence[str],
    inputs_json: str | None,
    catchup: bool,
    name: str | None,
    key: str | None,
) -> None:
    """Fire FILE's workflow at each slot of --cron (adding it again as it is changes nothing)."""
    import_modules(list(include))
    loaded = load_workflow(file)
    inputs = {**loaded.inputs, **_parse_inputs(pairs, inputs_json)}
    stored = Client().schedule(
        name or loaded.workflow.name,
        loaded.workflow,
        cron=cron,
        timezone=tz,
        inputs=inputs,
        catchup=catchup,
        key=key,
    )
    click.echo(f"schedule {stored.name}: {stored.cron} ({stored.timezone}), next {stored.next_at}")


@schedule.command("list")
def schedule_list() -> None:
    """Every schedule: its cron and zone, next and last fire, and the last run's state."""
    for found in Client().schedules():
        state = "paused" if found.paused else "active"
        following = "on resume" if found.paused else found.next_at
        last = "never fired"
        if found.last_at is not None:
            run_state = found.last_run_state.value if found.last_run_state else "removed"
            last = f"last {found.last_at} run {found.last_run_id} {run_state}"
        click.echo(
            f"{found.name:<24} {state:<6} {found.cron!r} {found.timezone}  next {following}  {last}"
        )


@schedule.command("remove")
@click.argument("name")
def schedule_remove(name: str) -> None:
    """Remove a schedule; its runs stay."""
    Client().unschedule(name)
    click.echo(f"schedule {name} removed")


@schedule.command("pause")
@click.argument("name")
def schedule_pause(name: str) -> None:
    """Fire nothing more until resumed."""
    changed = Client().pause_schedule(name)
    click.echo(f"schedule {name} " + ("paused" if changed else "was paused already"))


@schedule.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Fire again from the next slot (slots passed while paused are not fired)."""
    changed = Client().resume_schedule(name)
    click.echo(f"schedule {name} " + ("resumed" if changed else "was not paused"))


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
