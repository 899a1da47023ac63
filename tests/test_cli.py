"""The ``gleitzeit`` console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import REPO_ROOT, CeleryWorker, RedisServer, free_port

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


# -- what status and list show ----------------------------------------------------------------

RETRIED = (
    "name: retried\n"
    "tasks:\n"
    "  - {id: ok, task: tests.value, params: {value: {rows: 3}}}\n"
    "  - {id: bad, task: tests.fail, params: {message: 'no ${ok.result.rows}'}, retries: 1,"
    " backoff: 0.01}\n"
    "  - {id: after, task: tests.value, params: {value: '${bad.result}'}}\n"
)


def ran(tmp_path: Path, flow: str) -> tuple[dict[str, str], str]:
    """Run ``flow`` embedded into a store of its own; its environment and the run's id."""
    path = tmp_path / "flow.yaml"
    path.write_text(flow)
    url = f"sqlite:///{tmp_path / 'shown.db'}"
    env = _env(GLEITZEIT_DATABASE_URL=url)
    # embedded runs read no GLEITZEIT_DATABASE_URL: the store is named
    run_cli("run", str(path), "-I", "tests.tasks", "--quiet", "--database", url, env=env)
    listed = json.loads(run_cli("list", "--json", env=env).stdout)
    return env, listed[0]["id"]


def test_status_shows_each_tasks_attempts_time_and_result_or_error(tmp_path: Path) -> None:
    env, run_id = ran(tmp_path, RETRIED)

    done = run_cli("status", run_id, env=env)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"run {run_id} retried: failed (3/3 tasks done)"
    assert lines[1].startswith("submitted 20") and "  ended 20" in lines[1]
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["TASK", "STATE", "ATTEMPTS", "TOOK", "RESULT", "/", "ERROR"]
    rows = {line.split()[0]: line.split(maxsplit=4) for line in table[1:]}
    assert rows["ok"][1:3] == ["succeeded", "1"] and rows["ok"][4] == '{"rows":3}'
    assert rows["bad"][1:3] == ["failed", "2"] and rows["bad"][4] == "ValueError: no 3"
    assert rows["after"][1:4] == ["blocked", "0", "-"]
    assert rows["ok"][3].endswith(("ms", "s"))
    # the columns line up: every row's state starts where the header's does
    column = table[0].index("STATE")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in table)

    shown = json.loads(run_cli("status", run_id, "--json", env=env).stdout)
    assert shown["run"]["id"] == run_id and shown["tasks"]["ok"]["result"] == {"rows": 3}


def test_status_of_one_task_shows_every_attempt_with_its_traceback(tmp_path: Path) -> None:
    env, run_id = ran(tmp_path, RETRIED)

    done = run_cli("status", run_id, "--task", "bad", env=env)

    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"task bad (tests.fail) of run {run_id}: failed, attempt 2")
    attempts = [line for line in text.splitlines() if line.startswith("attempt ")]
    assert [line.split(",")[0] for line in attempts] == ["attempt 1: failed", "attempt 2: failed"]
    assert text.count("Traceback (most recent call last):") == 2
    assert text.count("raise ValueError(message)") == 2

    unknown = run_cli("status", run_id, "--task", "ghost", env=env)
    assert unknown.returncode == 2 and "has no task 'ghost'" in unknown.stderr

    as_json = json.loads(run_cli("status", run_id, "--task", "bad", "--json", env=env).stdout)
    assert [a["error_type"] for a in as_json["attempts"]] == ["ValueError", "ValueError"]
    assert all("Traceback" in a["traceback"] for a in as_json["attempts"])


def test_list_shows_when_each_run_was_submitted_and_ended_and_how_long_it_took(
    tmp_path: Path,
) -> None:
    env, run_id = ran(tmp_path, RETRIED)

    done = run_cli("list", env=env)

    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["RUN", "NAME", "STATE", "TASKS", "SUBMITTED", "ENDED", "TOOK"]
    cells = row.split()
    assert cells[:4] == [run_id, "retried", "failed", "3/3"]
    submitted, ended = f"{cells[4]} {cells[5]}", f"{cells[6]} {cells[7]}"
    assert submitted <= ended and submitted.startswith("20")
    assert cells[8].endswith(("ms", "s"))
    assert row.index(cells[4]) == header.index("SUBMITTED")

    (listed,) = json.loads(run_cli("list", "--json", env=env).stdout)
    assert listed["state"] == "failed" and listed["finished_at"] >= listed["created_at"]


# -- results printed after a wait ------------------------------------------------------------

PAIR = (
    "name: pair\n"
    "tasks:\n"
    "  - {id: first, task: tests.value, params: {value: '${inputs.n}'}}\n"
    "  - {id: second, task: tests.add, params: {a: '${first.result}', b: 1}}\n"
)


def test_submit_and_retry_wait_print_the_final_tasks_or_all_as_run_does(
    worker: CeleryWorker, broker_url: str, database_url: str, tmp_path: Path
) -> None:
    flow = tmp_path / "pair.yaml"
    flow.write_text(PAIR)
    env = _env(CELERY_BROKER_URL=broker_url, GLEITZEIT_DATABASE_URL=database_url)

    def results(*args: str) -> tuple[str, dict[str, object]]:
        done = run_cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        head, _, printed = done.stdout.partition("\n")
        return head, json.loads(printed)

    run_id, final = results("submit", str(flow), "-I", "tests.tasks", "-i", "n=1", "--wait")
    assert final == {"second": 2}
    _, every = results("submit", str(flow), "-I", "tests.tasks", "-i", "n=2", "--wait", "--all")
    assert every == {"first": 2, "second": 3}

    _, final = results("retry", run_id, "--strategy", "from_start", "-i", "n=5", "--wait")
    assert final == {"second": 6}
    _, every = results("retry", run_id, "--strategy", "from_start", "--wait", "--all")
    assert every == {"first": 5, "second": 6}

    alone = run_cli("submit", str(flow), "-I", "tests.tasks", "--all", env=env)
    assert alone.returncode == 2 and "--all prints results: it needs --wait" in alone.stderr


# -- following a run ----------------------------------------------------------------------------


def ended_lines(stderr: str) -> list[tuple[str, str, int, int]]:
    """``12:01:02 extract succeeded (1/3)`` lines: (task, state, done, total)."""
    found = re.findall(r"^\d\d:\d\d:\d\d (\S+) (\w+) \((\d+)/(\d+)\)$", stderr, re.MULTILINE)
    return [(task, state, int(done), int(total)) for task, state, done, total in found]


def test_run_without_a_terminal_prints_a_line_per_ended_task(tmp_path: Path) -> None:
    done = gleitzeit("run", "examples/etl.py", "--db", f"sqlite:///{tmp_path / 'x.db'}")

    assert done.returncode == 0, done.stderr
    lines = ended_lines(done.stderr)
    assert [(state, n, total) for _, state, n, total in lines] == [
        ("succeeded", n, 8) for n in range(1, 9)
    ]
    at = {task: i for i, (task, *_) in enumerate(lines)}
    assert len(at) == 8
    for source in ("north", "south", "west"):  # each task after everything it depends on
        assert at[f"fetch_{source}"] < at[f"parse_{source}"] < at["join"] < at["report"]


def test_run_on_a_terminal_shows_the_count_of_ended_tasks_as_it_grows(tmp_path: Path) -> None:
    main, secondary = pty.openpty()
    with subprocess.Popen(
        [GLEITZEIT, "run", "examples/etl.py", "--db", f"sqlite:///{tmp_path / 'x.db'}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=secondary,
    ) as running:
        os.close(secondary)
        shown = b""
        while chunk := _read(main):
            shown += chunk
        assert running.wait(timeout=120) == 0
    os.close(main)

    screen = shown.decode()
    counts = [int(n) for n in re.findall(r"\]\s+(\d+)/8", screen)]
    assert counts == list(range(9)), screen  # 0/8, 1/8, ... 8/8: one step per ended task
    assert re.search(r"8/8\s+report succeeded", screen), screen


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # the other end closed: Linux reports EIO
        return b""


def test_submit_wait_and_watch_without_a_terminal_print_a_line_per_ended_task(
    worker: CeleryWorker, broker_url: str, database_url: str, tmp_path: Path
) -> None:
    flow = tmp_path / "slow.yaml"
    flow.write_text(
        "name: slow\n"
        "tasks:\n"
        "  - {id: a, task: tests.sleep, params: {seconds: 0.3}}\n"
        "  - {id: b, task: tests.sleep, params: {seconds: 0.3}, depends_on: [a]}\n"
        "  - {id: c, task: tests.sleep, params: {seconds: 0.3}, depends_on: [b]}\n"
    )
    env = _env(CELERY_BROKER_URL=broker_url, GLEITZEIT_DATABASE_URL=database_url)

    waited = run_cli("submit", str(flow), "-I", "tests.tasks", "--wait", env=env)
    assert waited.returncode == 0, waited.stderr
    expected = [("a", "succeeded", 1, 3), ("b", "succeeded", 2, 3), ("c", "succeeded", 3, 3)]
    assert ended_lines(waited.stderr) == expected

    run_id = run_cli("submit", str(flow), "-I", "tests.tasks", env=env).stdout.strip()
    watched = run_cli("watch", run_id, env=env)
    assert watched.returncode == 0, watched.stderr
    assert ended_lines(watched.stderr) == expected
    assert watched.stdout.strip() == f"run {run_id} succeeded"
