"""README.md's commands run, and every relative link of the docs names a file that exists.

The convention (also in docs/design.md, "Running the tests"):

- Every ```bash block of README.md is run, in order, as one session: in a copy of the
  repository (a fresh clone, as a newcomer has it), against a redis-server and a SQLite file
  this test starts. Its first command makes ``.venv`` in the copy and installs the package into
  it for real; once the README activates that venv, ``gleitzeit`` and ``celery`` are its. A
  block the test cannot run is fenced ```text or ```console, never ```bash; every fenced
  block names its language (see ``FENCES``), so a command cannot slip past this test unfenced.
- A block is split into commands (lines, ``\\``-continuations joined). Consecutive ordinary
  commands run as one ``bash -euo pipefail`` script (so ``RUN=$(...)`` reaches the next line)
  and must exit 0. Some commands are handled instead of run, by ``SPECIAL``:
  ``export NAME=VALUE`` sets the session's environment, ``. .venv/bin/activate`` puts the
  venv first on its PATH; ``pip install`` of its own (it would
  fetch gleitzeit from PyPI) is checked: each extra it names is one the package declares;
  ``bash scripts/test.sh`` (the whole suite: this test would run itself) is checked to be the
  command ``.ci/run`` calls; ``celery ... worker`` and ``celery ... beat`` run until stopped, so
  they are started in the background, seen to come up (the worker's ``ready.`` line, beat's
  ``Starting...``) and stopped by PID at the end. A chain of commands (``&&``) is ordinary: the
  fresh-machine line really makes a venv and installs the copy into it.
- The URLs the README names are replaced by the test's own, by ``SUBSTITUTIONS`` (each must
  still appear in the README, so the table cannot go stale); the session's environment starts
  with the same URLs, so nothing reaches a Redis or database the test did not start.
- At the end every run the README's commands submitted has succeeded, and beat's reconciler
  (sent every second here, ``GLEITZEIT_RECONCILE_INTERVAL=1``) has run on the worker.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gleitzeit import Client, RunState, Settings
from tests.services import REPO_ROOT, CeleryBeat, CeleryWorker, RedisServer, wait_until

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))

#: the languages a fenced block may name; only ``bash`` is run
FENCES = frozenset({"bash", "python", "text", "console", "yaml", "json"})

#: how long one script of the README may take (the fresh venv installs the package)
COMMAND_TIMEOUT = 300.0
#: how long a worker or beat may take to come up
READY_TIMEOUT = 60.0

#: what a copy of the repository leaves out: local state, never part of a clone
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    "*.db", "*.db-shm", "*.db-wal", "celerybeat-schedule*", "bench-results*",
)  # fmt: skip


@dataclass
class Session:
    """The state the README's commands share: where they run, their environment, services."""

    workdir: Path
    broker_url: str
    database_url: str
    env: dict[str, str]
    logs: Path
    services: list[CeleryWorker] = field(default_factory=list)


#: URL the README names -> the one the test gives instead
SUBSTITUTIONS: dict[str, Callable[[Session], str]] = {
    "redis://localhost:6379/0": lambda session: session.broker_url,
    "postgresql://user:pass@db/gleitzeit": lambda session: session.database_url,
}


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Every fenced block: its language, the line number of its fence, its lines."""
    blocks: list[tuple[str, int, list[str]]] = []
    current: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), number, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"a fenced block opened on line {current[1]} is never closed"
    return blocks


def commands(lines: list[str]) -> list[str]:
    """A block's commands: ``\\``-continued lines joined; blank and comment lines dropped."""
    found: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            found.append(command)
    assert not pending, f"a block ends in a continued line: {pending!r}"
    return found


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def substitute(text: str, session: Session) -> str:
    for named, ours in SUBSTITUTIONS.items():
        text = text.replace(named, ours(session))
    return text


# -- commands handled instead of run -------------------------------------------------------


def is_export(argv: list[str]) -> bool:
    return argv[:1] == ["export"]


def do_export(argv: list[str], session: Session) -> None:
    assert len(argv) == 2 and "=" in argv[1], f"export one NAME=VALUE: {argv}"
    name, _, value = argv[1].partition("=")
    assert "$" not in value, f"exported values are literal here: {argv}"
    session.env[name] = value


def is_activate(argv: list[str]) -> bool:
    return argv[:1] in (["."], ["source"]) and argv[1:] == [".venv/bin/activate"]


def do_activate(argv: list[str], session: Session) -> None:
    """What activating does for later commands: the venv the README made comes first."""
    venv = session.workdir / ".venv"
    assert (venv / "bin" / "activate").is_file(), "no venv to activate: the README makes it first"
    session.env["VIRTUAL_ENV"] = str(venv)
    session.env["PATH"] = os.pathsep.join([str(venv / "bin"), session.env["PATH"]])


def is_pip_install(argv: list[str]) -> bool:
    return len(argv) >= 2 and Path(argv[0]).name == "pip" and argv[1] == "install"


def check_pip_install(argv: list[str], session: Session) -> None:
    """Each requirement is the package (by name, or ``.``) with extras it declares."""
    declared = set(importlib.metadata.metadata("gleitzeit").get_all("Provides-Extra") or [])
    requirements = [word for word in argv[2:] if not word.startswith("-")]
    assert requirements, f"pip install of nothing: {argv}"
    for requirement in requirements:
        match = re.fullmatch(r"(gleitzeit|\.)(?:\[([\w,-]+)\])?", requirement)
        assert match, f"the README installs {requirement!r}, not gleitzeit"
        extras = set(filter(None, (match.group(2) or "").split(",")))
        assert extras <= declared, f"{requirement}: pyproject.toml declares only {declared}"


def is_test_command(argv: list[str]) -> bool:
    return argv[:2] == ["bash", "scripts/test.sh"]


def check_test_command(argv: list[str], session: Session) -> None:
    """``.ci/run`` ends by calling the same script (with arguments of its own)."""
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    calls = [words(line)[1:] for line in ci_lines if words(line)[:1] == ["exec"]]
    assert calls, ".ci/run calls no command with exec"
    assert calls[-1][: len(argv)] == argv, f".ci/run calls {calls[-1]}, the README {argv}"
    assert (REPO_ROOT / argv[1]).is_file()


def is_long_running(argv: list[str]) -> bool:
    return argv[:1] == ["celery"] and ("worker" in argv or "beat" in argv)


def start_long_running(argv: list[str], session: Session) -> None:
    kind = "beat" if "beat" in argv else "worker"
    log_path = session.logs / f"{kind}-{len(session.services)}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=session.workdir,
            env=session.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # no -n in the README: Celery names the node celery@<host>
    service = (
        CeleryBeat(process, kind, log_path)
        if kind == "beat"
        else CeleryWorker(process, "celery", log_path)
    )
    session.services.append(service)
    service.wait_ready(timeout=READY_TIMEOUT)


#: (is it, what to do instead of running it)
SPECIAL: list[tuple[Callable[[list[str]], bool], Callable[[list[str], Session], None]]] = [
    (is_export, do_export),
    (is_activate, do_activate),
    (is_pip_install, check_pip_install),
    (is_test_command, check_test_command),
    (is_long_running, start_long_running),
]


def run_script(script: str, session: Session, where: str) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=session.workdir,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"README {where} failed (exit {done.returncode}):\n{script}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


def run_block(lines: list[str], session: Session, where: str) -> None:
    script: list[str] = []
    for command in commands(lines):
        command = substitute(command, session)
        argv = words(command)
        handler = next((do for is_it, do in SPECIAL if is_it(argv)), None)
        if handler is None:
            script.append(command)
            continue
        if script:
            run_script("\n".join(script), session, where)
            script = []
        handler(argv, session)
    if script:
        run_script("\n".join(script), session, where)


# -- the session ------------------------------------------------------------------------------


def session_env(broker_url: str, database_url: str) -> dict[str, str]:
    """A newcomer's shell: no venv of this test's active, no settings of the developer's."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GLEITZEIT_", "CELERY_"))
        and name not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    ours = Path(sys.executable).parent.resolve()
    env["PATH"] = os.pathsep.join(
        entry
        for entry in env.get("PATH", os.defpath).split(os.pathsep)
        if entry and Path(entry).resolve() != ours
    )
    env["CELERY_BROKER_URL"] = broker_url
    env["GLEITZEIT_DATABASE_URL"] = database_url
    env["GLEITZEIT_RECONCILE_INTERVAL"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def session(redis_server: RedisServer, tmp_path: Path) -> Iterator[Session]:
    workdir = tmp_path / "gleitzeit"
    shutil.copytree(REPO_ROOT, workdir, ignore=IGNORED)
    broker_url = redis_server.url_for(9)  # a database no other test's workers use
    database_url = f"sqlite:///{tmp_path / 'readme.db'}"
    logs = tmp_path / "logs"
    logs.mkdir()
    started = Session(
        workdir=workdir,
        broker_url=broker_url,
        database_url=database_url,
        env=session_env(broker_url, database_url),
        logs=logs,
    )
    try:
        yield started
    finally:
        for service in reversed(started.services):
            service.stop()


def bash_blocks() -> list[tuple[int, list[str]]]:
    return [
        (line, body) for lang, line, body in fenced_blocks(README.read_text()) if lang == "bash"
    ]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_every_bash_block_of_the_readme_runs(session: Session) -> None:
    for line, body in bash_blocks():
        run_block(body, session, f"block at line {line}")

    client = Client(
        settings=Settings(database_url=session.database_url, broker_url=session.broker_url)
    )
    submitted = client.runs(limit=1000)
    assert submitted, "the README's commands submitted no run to the workers"
    assert {record.state for record in submitted} == {RunState.SUCCEEDED}
    worker = next(s for s in session.services if not isinstance(s, CeleryBeat))
    wait_until(
        lambda: re.search(r"Task gleitzeit\.reconcile\[[^]]+\] succeeded", worker.log_text()),
        timeout=30,
        message="beat's reconciler never ran on the README's worker",
    )


def test_the_readme_starts_with_a_fresh_machine_and_the_tests() -> None:
    first, second = (commands(body) for _, body in bash_blocks()[:2])
    assert first == [
        "python3 -m venv .venv && .venv/bin/pip install -e . "
        "&& .venv/bin/gleitzeit run examples/etl.py"
    ]
    assert second == ["bash scripts/test.sh"]


def test_every_substitution_is_of_a_url_the_readme_names() -> None:
    text = README.read_text()
    assert [named for named in SUBSTITUTIONS if named not in text] == []


def test_every_command_the_readme_starts_in_the_background_is_known() -> None:
    argvs = [words(c) for _, body in bash_blocks() for c in commands(body)]
    long_running = [argv for argv in argvs if is_long_running(argv)]
    assert len(long_running) == 2  # one worker, one beat
    assert all("-l" in argv for argv in long_running), "readiness is read from INFO lines"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.name)
def test_every_fenced_block_names_a_known_language(path: Path) -> None:
    unknown = [
        (line, lang) for lang, line, _ in fenced_blocks(path.read_text()) if lang not in FENCES
    ]
    assert unknown == [], f"{path.name}: fence with ```bash (run) or ```text (not run)"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.name)
def test_every_python_block_compiles(path: Path) -> None:
    for lang, line, body in fenced_blocks(path.read_text()):
        if lang == "python":
            compile("\n".join(body), f"{path.name}:{line}", "exec")


# -- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced blocks, where links are links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    found = set()
    for line in prose(path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            title = heading.group(1).strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(re.sub(r"`[^`]*`", "", prose(path.read_text())))
        if not re.match(r"[a-z]+:", target)
    ]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == [], f"{path.name}: " + "; ".join(broken)


def test_the_link_check_sees_links() -> None:
    assert "docs/recovery.md" in relative_links(README)
    assert "what-a-task-costs" in anchors(REPO_ROOT / "docs" / "design.md")


#: documents the project was planned with; users have neither, so nothing may cite them
UNSHIPPED = re.compile(r"\bSPEC\b|SPEC\.md|DESIGN" + r"-NOTES")


def test_nothing_cites_a_document_users_do_not_have() -> None:
    shipped = [README, *DOCS, REPO_ROOT / "celeryconfig.py"]
    for folder in ("gleitzeit", "tests", "scripts", "examples"):
        shipped += sorted((REPO_ROOT / folder).rglob("*.py"))
    citing = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in shipped
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if UNSHIPPED.search(line) and path != Path(__file__)
    ]
    assert citing == []
