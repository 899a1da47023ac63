"""The first hour with the ``gleitzeit`` command: what a person types, run as a subprocess.

Mistakes (a bad database URL, a broken workflow file, a module that is not there) are one
line saying what and where; commands that look at runs never create or migrate a store;
run ids are taken by any unique start; ``gleitzeit run`` stays on its own machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis
from sqlalchemy import inspect

from gleitzeit import Client, Workflow
from gleitzeit.dispatch import EXECUTE_TASK
from gleitzeit.store.engine import make_engine, masked_url
from tests.conftest import STORES, postgres_admin_url
from tests.services import (
    REPO_ROOT,
    CeleryWorker,
    RedisServer,
    free_port,
    postgres_database,
    wait_until,
)
from tests.test_cli import GLEITZEIT


def clean_env(**values: str) -> dict[str, str]:
    """The environment of a user who has set nothing of gleitzeit's or Celery's but ``values``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GLEITZEIT_", "CELERY_"))
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(values)
    return env


def gleitzeit(
    *args: str, cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GLEITZEIT, *args],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed, checked to be one line and no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# -- errors: one line each, the traceback on request -------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("notadb://x", "no database is known by 'notadb'"),
        ("/tmp/gleitzeit-x.db", "it is not a URL (for a SQLite file there: sqlite:////tmp/"),
    ],
)
def test_a_bad_database_url_is_one_line(url: str, says: str, tmp_path: Path) -> None:
    done = gleitzeit("list", cwd=tmp_path, env=clean_env(GLEITZEIT_DATABASE_URL=url))

    error = one_line_error(done)
    assert f"database URL {url!r}" in error and says in error
    assert "GLEITZEIT_DATABASE_URL" in error


def test_a_syntax_error_in_a_workflow_file_names_its_file_and_line(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text("from gleitzeit import Workflow\n\nwf = = Workflow('x')\n")

    error = one_line_error(gleitzeit("validate", str(flow), cwd=tmp_path))

    assert error.startswith(f"error: {flow}:3: syntax error in workflow file")
    assert "invalid syntax" in error


def test_an_import_error_in_a_workflow_file_names_the_line_and_the_module(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text("from gleitzeit import Workflow\nimport no_such_module_here\n")

    for command in ("validate", "run"):
        error = one_line_error(gleitzeit(command, str(flow), cwd=tmp_path))
        assert error.startswith(f"error: {flow}:2: cannot load workflow file")
        assert "No module named 'no_such_module_here'" in error


def test_an_include_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    done = gleitzeit("validate", str(REPO_ROOT / "examples/etl.py"), "-I", "no.such.module")

    error = one_line_error(done)
    assert error.startswith("error: -I no.such.module: no module named 'no'")


def test_a_failing_include_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "badtasks.py").write_text("x = 1\nraise RuntimeError('no config')\n")

    done = gleitzeit("validate", str(REPO_ROOT / "examples/etl.py"), "-I", "badtasks", cwd=tmp_path)

    error = one_line_error(done)
    assert f"{tmp_path / 'badtasks.py'}:2: cannot load task module 'badtasks' (-I)" in error
    assert "RuntimeError: no config" in error


@pytest.mark.parametrize("how", ["option", "environment"])
def test_debug_shows_the_traceback(how: str, tmp_path: Path) -> None:
    env = clean_env(GLEITZEIT_DATABASE_URL="notadb://x")
    args = ["list"]
    if how == "option":
        args = ["--debug", *args]
    else:
        env["GLEITZEIT_DEBUG"] = "1"

    done = gleitzeit(*args, cwd=tmp_path, env=env)

    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "sqlalchemy.exc.NoSuchModuleError" in done.stderr  # the cause, kept
    assert done.stderr.strip().splitlines()[-1].startswith("error: database URL 'notadb://x'")


# -- commands that look never create or migrate ------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["status", "0f3c"], ["list"], ["history", "0f3c"], ["watch", "0f3c"], ["cancel", "0f3c"]],
)
def test_looking_where_there_is_no_store_creates_none(args: list[str], tmp_path: Path) -> None:
    done = gleitzeit(*args, cwd=tmp_path)

    error = one_line_error(done)
    path = tmp_path / "gleitzeit.db"
    assert f"no store at sqlite:///gleitzeit.db ({path} does not exist)" in error
    assert "gleitzeit db upgrade" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", STORES)
def test_looking_at_a_store_without_tables_migrates_nothing(kind: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'other.db'}"
        else:
            url = stack.enter_context(postgres_database(postgres_admin_url()))
        engine = make_engine(url)
        stack.callback(engine.dispose)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE theirs (x INTEGER)")

        done = gleitzeit("list", env=clean_env(GLEITZEIT_DATABASE_URL=url))

        error = one_line_error(done)
        shown = masked_url(url)
        assert f"the store at {shown} has no gleitzeit tables: run 'gleitzeit db upgrade'" in error
        assert inspect(engine).get_table_names() == ["theirs"]


def test_check_reports_a_missing_store_and_creates_none(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = clean_env(CELERY_BROKER_URL=redis_server.url_for(5))

    done = gleitzeit("check", "-I", "tests.tasks", cwd=tmp_path, env=env)

    assert done.returncode == 1
    assert "error: GLEITZEIT_DATABASE_URL: no store at sqlite:///gleitzeit.db" in done.stdout
    assert "1 problem(s) break gleitzeit's guarantees" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_database_is_said_to_be_unreachable(tmp_path: Path) -> None:
    url = f"postgresql://ana:s3cret@127.0.0.1:{free_port()}/gleitzeit"

    done = gleitzeit("list", cwd=tmp_path, env=clean_env(GLEITZEIT_DATABASE_URL=url))

    error = one_line_error(done)
    assert error.startswith("error: cannot reach the store at postgresql+psycopg://ana:***@")
    assert "s3cret" not in done.stderr and "migrate" not in error


# -- run ids by their start ---------------------------------------------------------------


def test_every_command_takes_a_unique_start_of_a_run_id(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    flow = tmp_path / "one.yaml"
    flow.write_text("name: one\ntasks:\n  - {id: only, task: tests.value, params: {value: 1}}\n")
    env = clean_env(
        CELERY_BROKER_URL=redis_server.url_for(7),  # no worker listens: runs stay running
        GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'ids.db'}",
    )
    ids: list[str] = []
    # 17 runs: two of them share their first hex digit
    while len({run_id[0] for run_id in ids}) == len(ids):
        submitted = gleitzeit("submit", str(flow), "-I", "tests.tasks", env=env)
        assert submitted.returncode == 0, submitted.stderr
        ids.append(submitted.stdout.strip())
    run_id = ids[0]
    short = run_id[:8]

    status = gleitzeit("status", short, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"run {run_id} one: running")
    assert gleitzeit("pause", short, env=env).stdout.strip() == f"run {run_id} paused"
    assert gleitzeit("resume", short, env=env).stdout.strip() == f"run {run_id} resumed"
    assert "run_resumed" in gleitzeit("history", short, env=env).stdout
    assert gleitzeit("cancel", short, env=env).stdout.strip() == f"run {run_id} cancelled"
    assert gleitzeit("watch", short, env=env).stdout.strip() == f"run {run_id} cancelled"

    first = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    shared = sorted(i for i in ids if i[0] == first)
    ambiguous = one_line_error(gleitzeit("status", first, env=env))
    assert f"run id {first!r} is ambiguous" in ambiguous
    assert all(i in ambiguous for i in shared[:5])

    unknown = one_line_error(gleitzeit("cancel", "zz9", env=env))
    where = env["GLEITZEIT_DATABASE_URL"]
    assert f"no run with an id starting with 'zz9' in the store at {where}" in unknown


# -- gleitzeit run stays on this machine ----------------------------------------------------

ETL = str(REPO_ROOT / "examples" / "etl.py")


def test_run_ignores_a_deployments_broker_and_store(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    deployment = redis_server.url_for(8)
    redis.Redis.from_url(deployment).flushdb()
    env = clean_env(
        CELERY_BROKER_URL=deployment,
        GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'deployment.db'}",
    )

    done = gleitzeit("run", ETL, "--quiet", cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["report"]["revenue"] == 1478.8
    assert (tmp_path / "gleitzeit.db").exists()
    assert not (tmp_path / "deployment.db").exists()
    assert redis.Redis.from_url(deployment).dbsize() == 0  # not one message, not one binding


def test_run_uses_a_broker_only_when_told(redis_server: RedisServer, tmp_path: Path) -> None:
    chosen = redis_server.url_for(9)
    redis.Redis.from_url(chosen).flushdb()
    url = f"sqlite:///{tmp_path / 'chosen.db'}"

    done = gleitzeit("run", ETL, "--quiet", "--broker", chosen, "--database", url, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["report"]["revenue"] == 1478.8
    assert (tmp_path / "chosen.db").exists() and not (tmp_path / "gleitzeit.db").exists()
    assert redis.Redis.from_url(chosen).dbsize() > 0  # the queue's bindings


def test_run_consumes_the_queues_its_tasks_name(tmp_path: Path) -> None:
    flow = tmp_path / "queues.yaml"
    flow.write_text(
        "name: queues\n"
        "tasks:\n"
        "  - {id: a, task: tests.value, params: {value: 2}, queue: reports}\n"
        "  - {id: b, task: tests.add, params: {a: '${a.result}', b: 1}, queue: heavy}\n"
    )

    done = gleitzeit("run", str(flow), "-I", "tests.tasks", "--quiet", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"b": 3}


def test_run_on_a_broker_that_does_not_answer_says_so(tmp_path: Path) -> None:
    broker = f"redis://127.0.0.1:{free_port()}/0"

    error = one_line_error(gleitzeit("run", ETL, "--broker", broker, cwd=tmp_path))

    assert error.startswith(f"error: cannot reach the broker at {broker}")


# -- PostgreSQL without its driver ----------------------------------------------------------


def test_postgresql_without_psycopg_names_the_extra_to_install(tmp_path: Path) -> None:
    # psycopg not installed, as a plain `pip install gleitzeit` leaves it: importing it fails
    (tmp_path / "psycopg").mkdir()
    (tmp_path / "psycopg" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = clean_env()
    env["PYTHONPATH"] = f"{tmp_path}:{REPO_ROOT}"
    url = "postgresql://ana:s3cret@127.0.0.1:5432/gleitzeit"

    for args in (["db", "upgrade", "--database", url], ["list"]):
        env["GLEITZEIT_DATABASE_URL"] = url
        error = one_line_error(gleitzeit(*args, cwd=tmp_path, env=env))
        assert error == (
            "error: the store at postgresql+psycopg://ana:***@127.0.0.1:5432/gleitzeit is "
            "PostgreSQL, whose driver (psycopg 3) is not installed: "
            "pip install 'gleitzeit[postgres]'"
        )


def test_db_upgrade_of_a_database_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://ana:s3cret@127.0.0.1:{free_port()}/gleitzeit"

    error = one_line_error(gleitzeit("db", "upgrade", "--database", url, cwd=tmp_path))

    assert error.startswith("error: cannot reach the store at postgresql+psycopg://ana:***@")


def test_db_upgrade_creates_the_store_that_reads_then_find(tmp_path: Path) -> None:
    done = gleitzeit("db", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "store at sqlite:///gleitzeit.db is up to date"

    listed = gleitzeit("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == ""


# -- validate refuses what submit and run refuse --------------------------------------------

FLOW = (
    "name: f\n"
    "tasks:\n"
    "  - {id: a, task: tests.value, params: {value: '${inputs.n}'}}\n"
    "  - {id: b, task: TASK, params: {a: '${a.result}', b: 1}}\n"
)


def test_validate_with_includes_refuses_an_unknown_task_as_run_does(tmp_path: Path) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text(FLOW.replace("TASK", "tests.nope"))
    args = [str(flow), "-I", "tests.tasks", "-i", "n=1"]

    validated = gleitzeit("validate", *args, cwd=tmp_path)
    ran = gleitzeit("run", *args, cwd=tmp_path)

    for done in (validated, ran):
        assert done.returncode == 1, done.stdout + done.stderr
        assert "workflow 'f' is invalid (1 problem):" in done.stderr
        assert "task 'b': no Celery task named 'tests.nope' is registered" in done.stderr

    flow.write_text(FLOW.replace("TASK", "tests.add"))
    valid = gleitzeit("validate", *args, cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert f"{flow}: workflow 'f' is valid (2 tasks)" in valid.stdout


def test_validate_refuses_an_input_not_given_as_submit_does(tmp_path: Path) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text(FLOW.replace("TASK", "tests.add"))
    env = clean_env(
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'f.db'}",
    )

    validated = gleitzeit("validate", str(flow), cwd=tmp_path, env=env)
    submitted = gleitzeit("submit", str(flow), cwd=tmp_path, env=env)

    for done in (validated, submitted):
        assert done.returncode == 1, done.stdout + done.stderr
        assert "input 'n' is referenced by ['a'] but not given" in done.stderr
        assert "give inputs with -i NAME=VALUE or --inputs-json" in done.stderr
    assert not (tmp_path / "f.db").exists()  # refused before anything was stored

    valid = gleitzeit("validate", str(flow), "-i", "n=2", cwd=tmp_path, env=env)
    assert valid.returncode == 0, valid.stderr


# -- two deployments on one queue -------------------------------------------------------------


def test_a_message_for_a_run_the_workers_store_lacks_is_a_warning(
    worker: CeleryWorker, broker_url: str, database_url: str, tmp_path: Path
) -> None:
    flow = tmp_path / "one.yaml"
    flow.write_text("name: one\ntasks:\n  - {id: only, task: tests.value, params: {value: 1}}\n")
    # the worker's broker, another store: a second deployment misconfigured onto its queue
    env = clean_env(
        CELERY_BROKER_URL=broker_url, GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}"
    )

    submitted = gleitzeit("submit", str(flow), "-I", "tests.tasks", env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()

    def warned() -> str | None:
        lines = worker.log_text().splitlines()
        return next((line for line in lines if run_id in line and "WARNING" in line), None)

    line = wait_until(warned, timeout=60, message=f"no warning about run {run_id}")
    assert f"run {run_id} task only attempt 1: no such run in this worker's store" in line
    assert f"({masked_url(database_url)})" in line
    assert "check that its GLEITZEIT_DATABASE_URL is this worker's" in line
    assert not any(
        run_id in row and "duplicate or stale" in row for row in worker.log_text().splitlines()
    )


def test_a_duplicate_message_stays_an_info(client: Client, worker: CeleryWorker) -> None:
    wf = Workflow("dup")
    wf.task("only", "tests.value", params={"value": 1})
    run = client.submit(wf)
    assert run.wait(timeout=60) == {"only": 1}

    client.app.send_task(EXECUTE_TASK, args=[run.id, "only", 1])  # delivered again

    def noted() -> str | None:
        lines = worker.log_text().splitlines()
        return next((line for line in lines if run.id in line and "duplicate" in line), None)

    line = wait_until(noted, timeout=60, message=f"no note of the duplicate of run {run.id}")
    assert "INFO" in line and "duplicate or stale message, no work" in line
