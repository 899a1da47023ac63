"""``gleitzeit graph`` as a user runs it (a real subprocess) on a real run in the store, on
workflow files, and on input it cannot draw; ``client.graph`` on the same run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pydot
import pytest

from gleitzeit import Client, Settings
from gleitzeit.graph import json_schema
from tests.services import REPO_ROOT

GLEITZEIT = shutil.which("gleitzeit", path=str(Path(sys.executable).parent)) or "gleitzeit"
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"
#: the error of the run's failed task: a value that would break out of a careless label
HOSTILE_ERROR = 'ValueError: declined 1 "]; x -> y [a=<b>&amp;\\N'

SAGA = """\
name: saga
tasks:
  - {id: book, task: tests.value, params: {value: 1}, compensate: tests.describe}
  - {id: live, task: tests.fail, params: {message: down}, on_failure: "alternative:cached"}
  - {id: cached, task: tests.value, params: {value: 2}}
  - {id: enrich, task: tests.fail, on_failure: skip}
  - id: charge
    task: tests.fail
    params: {message: 'declined ${book.result} "]; x -> y [a=<b>&amp;\\N'}
  - {id: mail, task: tests.add, params: {a: "${charge.result}", b: 1}}
  - {id: report, task: tests.describe, params: {l: "${live.result}", e: "${enrich.result}"}}
"""


def gleitzeit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GLEITZEIT, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed, with nothing on standard output."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    return line


class FailedRun:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.flow = folder / "saga.yaml"
        self.flow.write_text(SAGA)
        self.db = f"sqlite:///{folder / 'runs.db'}"

    def graph(self, *args: str) -> subprocess.CompletedProcess[str]:
        return gleitzeit("graph", self.run_id, "--db", self.db, *args)

    def start(self) -> FailedRun:
        ran = gleitzeit("run", str(self.flow), "-I", "tests.tasks", "--db", self.db, "--quiet")
        assert ran.returncode == 1, ran.stderr  # the run failed, as it should
        found = re.search(r"^run (\S+) \(saga\) started$", ran.stderr, re.MULTILINE)
        assert found is not None, ran.stderr
        self.run_id = found[1]
        return self


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """A run of every kind of node, ended failed, by the embedded runner in its own process."""
    return FailedRun(tmp_path_factory.mktemp("graph")).start()


def validated(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    jsonschema.validate(data, json_schema())
    return data


# -- a run in the store ----------------------------------------------------------------------


def test_a_failed_runs_json_has_its_states_kinds_and_edges(failed_run: FailedRun) -> None:
    done = failed_run.graph("--format", "json")

    assert done.returncode == 0, done.stderr
    data = validated(done.stdout)
    assert data["run"] == {"id": failed_run.run_id, "state": "failed"}
    nodes = {node["id"]: node for node in data["nodes"]}
    assert {key: (n["state"], n["kind"]) for key, n in nodes.items()} == {
        "book": ("succeeded", "task"),
        "live": ("skipped", "task"),
        "cached": ("succeeded", "alternative"),
        "enrich": ("skipped", "task"),
        "charge": ("failed", "task"),
        "mail": ("blocked", "task"),
        "report": ("succeeded", "task"),
        "book:compensate": ("succeeded", "compensation"),
    }
    assert nodes["charge"]["error"] == HOSTILE_ERROR
    assert nodes["charge"]["attempts"] == 1 and nodes["mail"]["attempts"] == 0
    assert nodes["book:compensate"]["name"] == "tests.describe"
    edges = {(e["source"], e["target"], e["kind"]) for e in data["edges"]}
    assert edges == {
        ("book", "charge", "dependency"),
        ("charge", "mail", "dependency"),
        ("live", "report", "dependency"),
        ("enrich", "report", "dependency"),
        ("live", "cached", "alternative"),
        ("book", "book:compensate", "compensation"),
    }


def test_client_graph_reads_the_same_run(failed_run: FailedRun) -> None:
    client = Client(settings=Settings(database_url=failed_run.db, broker_url="memory://"))

    data = validated(client.graph(failed_run.run_id, format="json"))

    assert data == json.loads(failed_run.graph("-f", "json").stdout)
    assert client.get(failed_run.run_id).graph("dot") == failed_run.graph("-f", "dot").stdout


def test_graph_of_a_run_as_dot_to_a_file(failed_run: FailedRun) -> None:
    out = failed_run.folder / "run.dot"

    done = failed_run.graph("-f", "dot", "-o", str(out))

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    (graph,) = pydot.graph_from_dot_data(out.read_text())
    nodes = {n.get_name().strip('"'): n.get_attributes() for n in graph.get_nodes()}
    assert len(nodes) == 8 + 3  # the run's tasks and the defaults' statements: nothing more
    assert nodes["charge"]["fillcolor"] == '"#fecaca"'  # failed
    assert nodes["mail"]["fillcolor"] == '"#fed7aa"'  # blocked
    assert "dashed" in nodes["live"]["style"]  # skipped
    assert nodes["cached"]["shape"] == "hexagon" and nodes["book:compensate"]["shape"] == "cds"
    edges = {
        (e.get_source().strip('"'), e.get_destination().strip('"')): e.get_attributes()
        for e in graph.get_edges()
    }
    assert edges[("live", "cached")]["style"] == "dashed"


def test_graph_of_a_run_as_mermaid(failed_run: FailedRun) -> None:
    done = failed_run.graph()  # mermaid is the default

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    assert '  n0("book"):::succeeded' in lines
    assert any(re.fullmatch(r'  n\d+\{\{"cached"\}\}:::succeeded', line) for line in lines)
    assert any(re.fullmatch(r'  n\d+>"book:compensate"\]:::succeeded', line) for line in lines)
    assert '  subgraph legend["run failed"]' in lines


def test_graph_of_a_run_as_svg(failed_run: FailedRun) -> None:
    out = failed_run.folder / "run.svg"

    done = failed_run.graph("--format", "svg", "-o", str(out))

    assert done.returncode == 0, done.stderr
    root = ET.parse(out).getroot()
    titles = {
        g.findtext(f"{SVG}title"): g.get("class")
        for g in root.iter(f"{SVG}g")
        if "node" in (g.get("class") or "").split()
    }
    assert titles["charge"] == "node kind-task state-failed"
    assert titles["cached"] == "node kind-alternative state-succeeded"
    assert "legend blocked" in titles
    (charge,) = [g for g in root.iter(f"{SVG}g") if g.findtext(f"{SVG}title") == "charge"]
    tooltips = {a.get(f"{XLINK}title") for a in charge.iter(f"{SVG}a")}
    assert tooltips == {f"charge (task): tests.fail\nfailed, attempt 1\n{HOSTILE_ERROR}"}


# -- a workflow file -------------------------------------------------------------------------


def test_graph_of_a_python_workflow_file_as_dot() -> None:
    done = gleitzeit("graph", "examples/etl.py", "--format", "dot")

    assert done.returncode == 0, done.stderr
    (graph,) = pydot.graph_from_dot_data(done.stdout)
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')) for e in graph.get_edges()}
    assert len(edges) == 7 and ("join", "report") in edges
    assert ("fetch_north", "parse_north") in edges


def test_graph_of_a_yaml_file_with_task_modules_as_json(tmp_path: Path) -> None:
    flow = tmp_path / "saga.yaml"
    flow.write_text(SAGA)

    done = gleitzeit("graph", str(flow), "-I", "tests.tasks", "-f", "json")

    assert done.returncode == 0, done.stderr
    data = validated(done.stdout)
    assert data["run"] is None
    assert {node["id"]: node["kind"] for node in data["nodes"]}["book:compensate"] == (
        "compensation"
    )
    assert {node["state"] for node in data["nodes"]} == {None}


# -- what it cannot draw ---------------------------------------------------------------------


def test_an_unknown_format_is_one_line() -> None:
    line = one_line(gleitzeit("graph", "examples/etl.py", "--format", "png"))

    assert line == "error: unknown graph format 'png': choose one of mermaid, dot, svg, json"


def test_a_run_id_matching_nothing_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    gleitzeit("db", "upgrade", "--db", url).check_returncode()

    line = one_line(gleitzeit("graph", "0f0f0f0f", "--db", url))

    assert line == f"error: no run with an id starting with '0f0f0f0f' in the store at {url}"


def test_a_missing_store_is_named_and_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"

    line = one_line(gleitzeit("graph", "0f0f0f0f", "--db", url))

    assert line.startswith(f"error: no store at {url}")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("README.md", "README.md: expected a .py, .json, .yaml or .yml file"),
        ("tests/tasks.py", "tests/tasks.py: defines no Workflow at module level"),
        ("nowhere.yaml", "nowhere.yaml: no such file"),
    ],
)
def test_a_file_that_is_not_a_workflow_is_one_line(target: str, says: str) -> None:
    assert one_line(gleitzeit("graph", target)) == f"error: {says}"


def test_an_output_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "no-such-folder" / "etl.svg"

    line = one_line(gleitzeit("graph", "examples/etl.py", "-f", "dot", "-o", str(out)))

    assert line == f"error: cannot write {out}: No such file or directory"


def test_an_invalid_workflow_names_its_problems(tmp_path: Path) -> None:
    flow = tmp_path / "loop.json"
    flow.write_text(
        json.dumps(
            {
                "name": "loop",
                "tasks": [
                    {"id": "a", "task": "x.a", "params": {"v": "${b.result}"}},
                    {"id": "b", "task": "x.b", "params": {"v": "${a.result}"}},
                ],
            }
        )
    )

    done = gleitzeit("graph", str(flow))

    assert done.returncode == 1 and done.stdout == ""
    assert "cycle: a -> b -> a" in done.stderr


def test_svg_where_dot_is_not_installed_says_what_to_install(tmp_path: Path) -> None:
    bare = tmp_path / "bin"  # a PATH with python and gleitzeit, without dot
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    assert shutil.which("dot", path=env["PATH"]) is None

    line = one_line(gleitzeit("graph", "examples/etl.py", "-f", "svg", env=env))

    assert line.startswith("error: drawing SVG needs Graphviz's dot, which is not on PATH")
    assert "apt-get install graphviz" in line and "brew install graphviz" in line
