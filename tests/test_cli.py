"""The ``gleitzeit`` console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import REPO_ROOT, RedisServer, free_port

GLEITZEIT = shutil.which("gleitzeit", path=str(Path(sys.executable).parent)) or "gleitzeit"


def gleitzeit(
    *args: str, cwd: Path = REPO_ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GLEITZEIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_run_executes_the_example_embedded(tmp_path: Path) -> None:
    db = tmp_path / "embedded.db"

    done = gleitzeit("run", "examples/etl.py", "--db", f"sqlite:///{db}")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["report"]
    assert report == {
        "day": "2026-11-21",
        "revenue": 1478.8,
        "by_product": {"kettle": 678.3, "grinder": 531.0, "toaster": 269.5},
        "by_source": {"north": 456.3, "south": 574.5, "west": 448.0},
    }
    assert "run " in done.stderr and db.exists()


def test_run_takes_inputs_and_prints_every_result_on_request(tmp_path: Path) -> None:
    done = gleitzeit(
        "run",
        "examples/etl.py",
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
        "-i",
        "day=2026-11-20",
        "--all",
        "--quiet",
    )

    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["report"]["revenue"] == round(478.8 + 122.5 + 159.6, 2)
    assert set(results) == {
        "fetch_north",
        "fetch_south",
        "fetch_west",
        "parse_north",
        "parse_south",
        "parse_west",
        "join",
        "report",
    }


def test_run_of_a_failing_workflow_exits_1_naming_the_task(tmp_path: Path) -> None:
    flow = tmp_path / "broken.yaml"
    flow.write_text(
        "name: broken\n"
        "tasks:\n"
        "  - {id: ok, task: tests.value, params: {value: 1}}\n"
        "  - {id: bad, task: tests.fail, params: {message: 'no ${ok.result}'}}\n"
    )

    done = gleitzeit(
        "run", str(flow), "-I", "tests.tasks", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--quiet"
    )

    assert done.returncode == 1
    assert "ended failed" in done.stderr
    assert "bad: ValueError: no 1" in done.stderr


def test_validate_accepts_a_good_file() -> None:
    done = gleitzeit("validate", "examples/etl.py")

    assert done.returncode == 0, done.stderr
    assert "is valid (8 tasks)" in done.stdout


def test_validate_prints_every_problem(tmp_path: Path) -> None:
    flow = tmp_path / "bad.json"
    flow.write_text(
        json.dumps(
            {
                "name": "bad",
                "tasks": [
                    {"id": "a", "task": "x.a", "params": {"v": "${c.result}"}},
                    {"id": "b", "task": "x.b", "params": {"v": "${a.result}"}},
                    {
                        "id": "c",
                        "task": "x.c",
                        "params": {"v": "${b.result}", "w": "${ghost.result}"},
                    },
                    {"id": "d", "task": "x.d", "depends_on": ["d"]},
                ],
            }
        )
    )

    done = gleitzeit("validate", str(flow))

    assert done.returncode == 1
    assert "cycle: a -> b -> c -> a" in done.stderr
    assert "unknown task 'ghost'" in done.stderr
    assert "task 'd' depends on itself" in done.stderr


def test_validate_reports_broken_yaml_with_its_line(tmp_path: Path) -> None:
    flow = tmp_path / "broken.yaml"
    flow.write_text("name: x\ntasks:\n  - id: a\n    task: [unclosed\n")

    done = gleitzeit("validate", str(flow))

    assert done.returncode == 1
    assert "invalid YAML at line" in done.stderr
    assert str(flow) in done.stderr


@pytest.mark.parametrize("args", [["validate", "nowhere.yaml"], ["run", "nowhere.py"]])
def test_a_missing_file_is_a_clear_error(args: list[str], tmp_path: Path) -> None:
    done = gleitzeit(*args, cwd=tmp_path)

    assert done.returncode != 0
    assert "nowhere" in done.stderr


def _env(**values: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(values)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GLEITZEIT, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_passes_with_gleitzeits_settings(redis_server: RedisServer, tmp_path: Path) -> None:
    env = _env(
        CELERY_BROKER_URL=redis_server.url_for(5),
        GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'check.db'}",
    )
    assert run_cli("db", "upgrade", env=env).returncode == 0
    done = run_cli("check", "-I", "tests.tasks", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: settings keep gleitzeit's guarantees" in done.stdout


def test_check_names_each_breaking_setting_and_fails(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "badconfig.py").write_text(
        "worker_prefetch_multiplier = 4\n"
        "accept_content = ['json', 'pickle']\n"
        "broker_transport_options = {'visibility_timeout': 5}\n"
    )
    env = _env(
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'check.db'}",
        GLEITZEIT_CELERY_CONFIG="badconfig",
    )
    env["PYTHONPATH"] = f"{tmp_path}:{REPO_ROOT}"
    assert run_cli("db", "upgrade", env=env).returncode == 0
    done = run_cli("check", "-I", "tests.tasks", env=env)

    assert done.returncode == 1
    assert "warning: worker_prefetch_multiplier: 4:" in done.stdout
    assert "error: accept_content: accepts pickle" in done.stdout
    assert "error: broker_transport_options.visibility_timeout: 5 s" in done.stdout
    assert "error: broker_url: broker unreachable" in done.stdout
    assert "3 problem(s) break gleitzeit's guarantees" in done.stderr  # errors, not warnings


def test_reconcile_once_publishes_what_an_offline_submit_left(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from gleitzeit import Client, Settings, Workflow

    database_url = f"sqlite:///{tmp_path / 'reconcile.db'}"
    offline = Client(
        settings=Settings(
            database_url=database_url, broker_url=f"redis://127.0.0.1:{free_port()}/0"
        )
    )
    wf = Workflow("offline")
    wf.task("only", "tests.value", params={"value": 1})
    run = offline.submit(wf)
    assert [row.published_at for row in offline.store.get_dispatches(run.id)] == [None]

    env = _env(
        CELERY_BROKER_URL=redis_server.url_for(5),
        GLEITZEIT_DATABASE_URL=database_url,
        GLEITZEIT_REPUBLISH_AFTER="0.01",
    )
    done = run_cli("reconcile", "--once", env=env)

    assert done.returncode == 0, done.stderr
    assert "reconciled: republished 1, published 1" in done.stdout
    (row,) = offline.store.get_dispatches(run.id)
    assert row.published_at is not None and row.publish_count == 1


def test_pause_resume_cancel_retry_and_history_from_the_command_line(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    flow = tmp_path / "pair.yaml"
    flow.write_text(
        "name: pair\n"
        "tasks:\n"
        "  - {id: first, task: tests.value, params: {value: '${inputs.n}'}}\n"
        "  - {id: second, task: tests.add, params: {a: '${first.result}', b: 1}}\n"
    )
    env = _env(
        CELERY_BROKER_URL=redis_server.url_for(6),  # no worker listens: the run waits
        GLEITZEIT_DATABASE_URL=f"sqlite:///{tmp_path / 'control.db'}",
    )
    submitted = run_cli("submit", str(flow), "-I", "tests.tasks", "-i", "n=1", env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, run_id, env=env)

    assert cli("pause").stdout.strip() == f"run {run_id} paused"
    assert cli("pause").stdout.strip() == f"run {run_id} was paused already"
    assert cli("resume").stdout.strip() == f"run {run_id} resumed"

    refused = cli("retry")
    assert refused.returncode == 1
    assert f"run {run_id} is still running" in refused.stderr

    assert cli("cancel").stdout.strip() == f"run {run_id} cancelled"
    assert cli("cancel").stdout.strip() == f"run {run_id} was cancelled already"
    assert "ended cancelled" in cli("resume").stderr

    flow.write_text(flow.read_text().replace("b: 1", "b: 2"))
    changed = run_cli("retry", run_id, "--file", str(flow), "-I", "tests.tasks", env=env)
    assert changed.returncode == 1
    assert "another definition of 'pair'" in changed.stderr
    assert "tasks changed: ['second']" in changed.stderr and "--force" in changed.stderr

    retried = run_cli(
        "retry", run_id, "--strategy", "from_start", "-i", "n=5", "-I", "tests.tasks", env=env
    )
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"run {run_id} retried (from_start): running"

    lines = cli("history").stdout.splitlines()
    kinds = [line.split()[1] for line in lines]
    assert kinds[0] == "run_submitted"
    for kind in ("run_paused", "run_resumed", "run_cancelled", "run_retried"):
        (line,) = [line for line in lines if line.split()[1] == kind]
        assert "  by " in line and "@" in line  # who: user@host
    assert kinds.index("run_cancelled") < kinds.index("run_retried")
    assert '"new_inputs": true' in next(line for line in lines if "run_retried" in line)
