"""Drawing graphs: every format read back (DOT by pydot and by dot itself, mermaid by its
structure, JSON by its schema), escaping of hostile values, a 5,000-task graph."""

from __future__ import annotations

import itertools
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import jsonschema
import pydot
import pytest

from gleitzeit import RunState, TaskState, Workflow
from gleitzeit.errors import GraphFormatError, GraphvizError, WorkflowValidationError
from gleitzeit.graph import (
    EDGE_STYLES,
    KIND_DESCRIPTIONS,
    KIND_SHAPES,
    STATE_COLORS,
    Edge,
    EdgeKind,
    Graph,
    Node,
    NodeKind,
    definition_graph,
    dot_string,
    json_schema,
    render,
    run_graph,
    to_dot,
    to_json,
    to_json_data,
    to_mermaid,
    to_svg,
    visible,
)

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


@dataclass(frozen=True)
class Status:
    """A task's state as a run's rows give it."""

    state: TaskState
    attempt: int = 1
    error: str | None = None


def diamond() -> Workflow:
    wf = Workflow("diamond")
    wf.task("top", "x.top")
    wf.task("left", "x.left", params={"v": "${top.result}"})
    wf.task("right", "x.right", depends_on=["top"])
    wf.task("bottom", "x.bottom", params={"l": "${left.result.rows[0]}"}, depends_on=["right"])
    return wf


def saga() -> Workflow:
    """Every kind of node and edge: an alternative, a skip, a compensation, a block."""
    wf = Workflow("saga")
    wf.task("book", "x.book", compensate="x.unbook")
    wf.task("live", "x.live", on_failure="alternative:cached")
    wf.task("cached", "x.cached")
    wf.task("enrich", "x.enrich", on_failure="skip")
    wf.task("charge", "x.charge", params={"b": "${book.result}"})
    wf.task("mail", "x.mail", params={"c": "${charge.result}"})
    wf.task("report", "x.report", params={"l": "${live.result}", "e": "${enrich.result}"})
    return wf


SAGA_RUN = {
    "book": Status(TaskState.SUCCEEDED),
    "live": Status(TaskState.SKIPPED, 3, "ConnectionError: down"),
    "cached": Status(TaskState.SUCCEEDED),
    "enrich": Status(TaskState.SKIPPED, 1, "ValueError: no"),
    "charge": Status(TaskState.FAILED, 2, "ValueError: card declined"),
    "mail": Status(TaskState.BLOCKED, 0),
    "report": Status(TaskState.SUCCEEDED),
    "book:compensate": Status(TaskState.RUNNING),
}


def validated(data: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(data, json_schema())
    return data


def parsed_dot(text: str) -> pydot.Dot:
    (graph,) = pydot.graph_from_dot_data(text)
    return graph


def unquote(name: str) -> str:
    """A DOT id as pydot gives it (quoted, escaped) back to the text it stands for."""
    assert name.startswith('"') and name.endswith('"'), name
    return re.sub(r'\\(["\\])', r"\1", name[1:-1])


def dot_nodes(graph: pydot.Dot) -> dict[str, dict[str, Any]]:
    """Nodes of the graph (not of its legend), by id, with their attributes."""
    return {
        unquote(node.get_name()): node.get_attributes()
        for node in graph.get_nodes()
        if node.get_name() not in ("node", "edge", "graph")  # the defaults' statements
    }


def dot_defaults(graph: pydot.Dot, statement: str = "graph") -> dict[str, Any]:
    """The attributes of a ``graph [...]`` (or ``node``, ``edge``) statement."""
    (found,) = graph.get_node(statement)
    attributes: dict[str, Any] = found.get_attributes()
    return attributes


def dot_edges(graph: pydot.Dot) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (unquote(edge.get_source()), unquote(edge.get_destination())): edge.get_attributes()
        for edge in graph.get_edges()
    }


MERMAID_NODE = re.compile(r'^  (n\d+)(\(|\{\{|>)"([^"]*)"(\)|\}\}|\]):::([a-z]+)$')
MERMAID_EDGE = re.compile(r'^  (n\d+) (-->|-\.->\|"[a-z ]+"\|) (n\d+)$')


def parsed_mermaid(text: str) -> tuple[dict[str, tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Nodes (name -> shape, label, class) and edges (source, arrow, target) of a flowchart
    outside its legend; every other line must be a legend's or a class definition."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, tuple[str, str, str]] = {}
    edges: list[tuple[str, str, str]] = []
    in_legend = False
    for line in lines[1:]:
        if line.startswith("  subgraph legend["):
            in_legend = True
        elif in_legend:
            in_legend = line != "  end"
            assert line == "  end" or re.match(r'^    l\d+(\(|\{\{|>)"[^"]*"(\)|\}\}|\]):::', line)
        elif node := MERMAID_NODE.match(line):
            nodes[node[1]] = (node[2], node[3], node[5])
        elif edge := MERMAID_EDGE.match(line):
            edges.append((edge[1], edge[2], edge[3]))
        else:
            assert re.match(r"^  classDef [a-z]+ [a-z0-9:#,. -]+$", line), line
    return nodes, edges


def svg_nodes(text: str) -> dict[str, ET.Element]:
    """The SVG's node groups by their title (the DOT id), legend included."""
    root = ET.fromstring(text)
    groups = [g for g in root.iter(f"{SVG}g") if "node" in g.get("class", "").split()]
    return {group.findtext(f"{SVG}title") or "": group for group in groups}


# -- the diamond: a definition ---------------------------------------------------------------


def test_a_definitions_json_has_every_task_in_layers_and_edges_from_references_and_depends_on() -> (
    None
):
    data = validated(to_json_data(definition_graph(diamond())))

    assert [(n["id"], n["rank"], n["state"], n["kind"]) for n in data["nodes"]] == [
        ("top", 0, None, "task"),
        ("left", 1, None, "task"),
        ("right", 1, None, "task"),
        ("bottom", 2, None, "task"),
    ]
    assert {(e["source"], e["target"], e["kind"]) for e in data["edges"]} == {
        ("top", "left", "dependency"),  # a reference
        ("top", "right", "dependency"),  # depends_on
        ("left", "bottom", "dependency"),
        ("right", "bottom", "dependency"),
    }
    assert data["run"] is None and data["workflow"] == "diamond"
    assert all(entry["count"] == 0 for entry in data["legend"]["states"])


def test_a_definitions_dot_parses_back_to_the_same_graph_in_layers() -> None:
    text = to_dot(definition_graph(diamond()))
    graph = parsed_dot(text)

    assert set(dot_nodes(graph)) == {"top", "left", "right", "bottom"}
    assert set(dot_edges(graph)) == {
        ("top", "left"),
        ("top", "right"),
        ("left", "bottom"),
        ("right", "bottom"),
    }
    assert dot_defaults(graph)["rankdir"] == "LR"
    (layer,) = [g for g in graph.get_subgraphs() if g.get_attributes().get("rank") == "same"]
    assert {unquote(n.get_name()) for n in layer.get_nodes()} == {"left", "right"}
    assert "rankdir=TB" in to_dot(definition_graph(diamond()), rankdir="TB")


def test_a_definitions_mermaid_is_a_flowchart_of_generated_names() -> None:
    nodes, edges = parsed_mermaid(to_mermaid(definition_graph(diamond())))

    assert nodes == {
        "n0": ("(", "top", "none"),
        "n1": ("(", "left", "none"),
        "n2": ("(", "right", "none"),
        "n3": ("(", "bottom", "none"),
    }
    assert sorted(edges) == [
        ("n0", "-->", "n1"),
        ("n0", "-->", "n2"),
        ("n1", "-->", "n3"),
        ("n2", "-->", "n3"),
    ]


def test_wf_graph_draws_each_format_and_refuses_others() -> None:
    wf = diamond()

    assert wf.graph() == to_mermaid(definition_graph(wf))
    assert wf.graph("dot") == to_dot(definition_graph(wf))
    assert wf.graph("json") == to_json(definition_graph(wf))
    with pytest.raises(GraphFormatError, match="unknown graph format 'png': choose one of mermaid"):
        wf.graph("png")


def test_an_invalid_workflow_is_not_drawn() -> None:
    wf = Workflow("loop")
    wf.task("a", "x.a", params={"v": "${b.result}"})
    wf.task("b", "x.b", params={"v": "${a.result}"})

    with pytest.raises(WorkflowValidationError, match="cycle: a -> b -> a"):
        wf.graph("json")


# -- a run: states, kinds, the legend --------------------------------------------------------


def test_a_runs_json_has_states_kinds_and_the_edges_of_alternatives_and_compensations() -> None:
    graph = run_graph(saga(), SAGA_RUN, run_id="r-1", run_state=RunState.RUNNING)
    data = validated(to_json_data(graph))

    nodes = {node["id"]: node for node in data["nodes"]}
    assert {key: (n["state"], n["kind"], n["of"]) for key, n in nodes.items()} == {
        "book": ("succeeded", "task", None),
        "live": ("skipped", "task", None),
        "cached": ("succeeded", "alternative", "live"),
        "enrich": ("skipped", "task", None),
        "charge": ("failed", "task", None),
        "mail": ("blocked", "task", None),
        "report": ("succeeded", "task", None),
        "book:compensate": ("running", "compensation", "book"),
    }
    assert nodes["live"]["label"] == "live (3 attempts)" and nodes["live"]["attempts"] == 3
    assert nodes["charge"]["error"] == "ValueError: card declined"
    assert nodes["cached"]["rank"] == 1 and nodes["report"]["rank"] == 2  # after its stand-in
    edges = {(e["source"], e["target"]): e["kind"] for e in data["edges"]}
    assert edges[("live", "cached")] == "alternative"
    assert edges[("book", "book:compensate")] == "compensation"
    assert edges[("live", "report")] == edges[("charge", "mail")] == "dependency"
    assert data["run"] == {"id": "r-1", "state": "running"}
    counts = {entry["state"]: entry["count"] for entry in data["legend"]["states"]}
    assert counts == {
        "pending": 0,
        "queued": 0,
        "running": 1,
        "retrying": 0,
        "succeeded": 3,
        "failed": 1,
        "skipped": 2,
        "blocked": 1,
        "cancelled": 0,
    }
    kinds = {entry["kind"]: entry["count"] for entry in data["legend"]["kinds"]}
    assert kinds == {"task": 6, "alternative": 1, "compensation": 1}


def test_a_compensation_appears_once_it_is_a_task_of_the_run() -> None:
    before = {k: v for k, v in SAGA_RUN.items() if k != "book:compensate"}

    ran = {n.id for n in run_graph(saga(), before).nodes}
    defined = {n.id for n in definition_graph(saga()).nodes}

    assert "book:compensate" not in ran and "book:compensate" in defined


def test_a_runs_dot_colors_by_state_and_sets_skipped_alternatives_and_compensations_apart() -> None:
    text = to_dot(run_graph(saga(), SAGA_RUN, run_id="r-1", run_state=RunState.RUNNING))
    graph = parsed_dot(text)
    nodes = dot_nodes(graph)

    assert nodes["book"]["fillcolor"] == '"#bbf7d0"'
    assert nodes["charge"]["fillcolor"] == '"#fecaca"'
    assert nodes["mail"]["fillcolor"] == '"#fed7aa"'
    assert "dashed" in nodes["live"]["style"] and "dashed" not in nodes["book"]["style"]
    assert nodes["cached"]["shape"] == "hexagon" and nodes["book"]["shape"] == "box"
    assert nodes["book:compensate"]["shape"] == "cds"
    assert nodes["charge"]["class"] == '"kind-task state-failed"'
    edges = dot_edges(graph)
    assert edges[("live", "cached")]["style"] == "dashed"
    assert edges[("book", "book:compensate")]["style"] == "dotted"
    assert "style" not in edges[("book", "charge")]
    (legend,) = [g for g in graph.get_subgraphs() if g.get_name() == "cluster_legend"]
    labels = {unquote(n.get_name()): n.get_attributes()["label"] for n in legend.get_nodes()}
    assert labels["legend failed"] == '"failed (1)"'
    assert labels["legend succeeded"] == '"succeeded (3)"'
    assert "legend pending" not in labels  # only the states the run has
    assert labels["legend alternative"] == '"alternative"'
    assert dot_defaults(graph)["label"] == '"saga: run r-1 (running)"'


def test_a_runs_mermaid_classes_nodes_by_state_and_shapes_them_by_kind() -> None:
    text = to_mermaid(run_graph(saga(), SAGA_RUN, run_id="r-1", run_state=RunState.FAILED))
    nodes, edges = parsed_mermaid(text)

    by_label = {label: (shape, state) for shape, label, state in nodes.values()}
    assert by_label["book"] == ("(", "succeeded")
    assert by_label["cached"] == ("{{", "succeeded")
    assert by_label["book:compensate"] == (">", "running")
    assert by_label["live (3 attempts)"] == ("(", "skipped")
    name = {label: key for key, (_, label, _) in nodes.items()}
    assert (name["live (3 attempts)"], '-.->|"if it fails"|', name["cached"]) in edges
    assert (name["book"], '-.->|"undo"|', name["book:compensate"]) in edges
    assert (name["charge (2 attempts)"], "-->", name["mail"]) in edges
    assert "stroke-dasharray" in next(
        line for line in text.splitlines() if line.startswith("  classDef skipped")
    )
    assert '  subgraph legend["run failed"]' in text
    assert '"failed (1)"):::failed' in text


def test_a_map_node_is_labelled_with_its_item_counts() -> None:
    node = Node("parse", "x.parse", state=TaskState.RUNNING, items=(97, 100))
    graph = Graph("m", (node,), ())

    assert validated(to_json_data(graph))["nodes"][0]["items"] == {"done": 97, "total": 100}
    assert node.label == "parse 97/100"
    assert '[label="parse 97/100"' in to_dot(graph)


# -- escaping --------------------------------------------------------------------------------

HOSTILE = [
    'quote"];evil [label="x',
    "back\\slash\\",
    "line\nbreak\r\nand\\n\\N\\G",
    "}; digraph x { a -> b",
    "<script>alert(1)</script>&amp;",
    'n0["x"] --> n1 %% end',
    "#quot;#35;`md`|pipe|{{x}}",
    "ctrl\x00\x01\x1b\x7f",
    "ünïcödé ✓ :compensate",
]


def hostile_graph() -> Graph:
    nodes = tuple(
        Node(
            text,
            name=f"name {text}",
            kind=NodeKind.COMPENSATION if index % 3 == 2 else NodeKind.TASK,
            state=TaskState.FAILED,
            error=f"Error: {text}",
        )
        for index, text in enumerate(HOSTILE)
    )
    edges = tuple(Edge(a.id, b.id) for a, b in itertools.pairwise(nodes))
    return Graph(f"wf {HOSTILE[0]}", nodes, edges, run_id=HOSTILE[2], run_state=RunState.FAILED)


def test_hostile_ids_and_labels_stay_inside_their_dot_strings() -> None:
    graph = hostile_graph()
    parsed = parsed_dot(to_dot(graph))

    names = [node.get_name() for node in parsed.get_nodes()]
    assert sorted(n for n in names if n not in ("node", "edge", "graph")) == sorted(
        dot_string(node.id) for node in graph.nodes
    )
    assert len(parsed.get_edges()) == len(HOSTILE) - 1
    (legend,) = parsed.get_subgraphs()[-1:]
    assert legend.get_name() == "cluster_legend"


def test_hostile_values_show_as_themselves_in_the_svg_dot_draws() -> None:
    graph = hostile_graph()
    svg = to_svg(graph)

    drawn = svg_nodes(svg)  # ElementTree parses it: no markup broke out
    assert len(drawn) == len(HOSTILE) + 2  # and the legend's: failed, compensation
    for node in graph.nodes:
        # a name is shown as Graphviz holds it: a backslash doubled, a line break as \n
        title = visible(node.id).replace("\\", "\\\\").replace("\n", "\\n")
        group = drawn[title]
        assert [t.text for t in group.iter(f"{SVG}text")] == visible(node.label).split("\n")
        (link,) = {a.get(f"{XLINK}title") for a in group.iter(f"{SVG}a")}
        assert link == visible(node.tooltip)
        assert f"Error: {visible(node.id)}" in link
    assert "<script" not in svg and "&lt;script&gt;" in svg
    root = ET.fromstring(svg)
    title = [t.text for t in root.find(f"{SVG}g").findall(f"{SVG}text")]  # the graph's label
    assert "\n".join(title) == visible(f"wf {HOSTILE[0]}: run {HOSTILE[2]} (failed)")


def test_hostile_labels_stay_inside_their_mermaid_quotes() -> None:
    text = to_mermaid(hostile_graph())
    nodes, edges = parsed_mermaid(text)

    assert len(nodes) == len(HOSTILE) and len(edges) == len(HOSTILE) - 1
    assert set(nodes) == {f"n{i}" for i in range(len(HOSTILE))}
    for _, label, _ in nodes.values():
        assert re.fullmatch(r"([A-Za-z0-9 _.,:/()+=?!@$^~'*-]|#\d+;)*", label), label
    assert "#34;#93;#59;evil" in nodes["n0"][1]  # '"];evil'


def test_hostile_values_come_back_unchanged_from_json() -> None:
    graph = hostile_graph()

    data = validated(to_json_data(graph))

    assert [node["id"] for node in data["nodes"]] == HOSTILE
    assert [node["error"] for node in data["nodes"]] == [f"Error: {text}" for text in HOSTILE]
    assert data["run"]["id"] == HOSTILE[2]


# -- the tables -----------------------------------------------------------------------------


def test_every_state_and_kind_has_its_look_and_is_in_the_schema() -> None:
    """A new task state or kind of node (a map, a wait, a loop) needs a color or a shape and
    a place in the JSON form's schema."""
    schema = json_schema()["$defs"]

    assert list(STATE_COLORS) == list(TaskState)
    assert schema["taskState"]["enum"] == [state.value for state in TaskState]
    assert schema["runState"]["enum"] == [state.value for state in RunState]
    assert list(KIND_SHAPES) == list(KIND_DESCRIPTIONS) == list(NodeKind)
    assert schema["kind"]["enum"] == [kind.value for kind in NodeKind]
    assert list(EDGE_STYLES) == list(EdgeKind)
    assert schema["edge"]["properties"]["kind"]["enum"] == [kind.value for kind in EdgeKind]


# -- errors ----------------------------------------------------------------------------------


def test_an_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(GraphFormatError, match="choose one of mermaid, dot, svg, json"):
        render(definition_graph(diamond()), "png")


def test_svg_without_dot_says_what_to_install() -> None:
    with pytest.raises(GraphvizError) as raised:
        to_svg(definition_graph(diamond()), dot="gleitzeit-no-such-dot")

    message = str(raised.value)
    assert "apt-get install graphviz" in message and "brew install graphviz" in message
    assert "\n" not in message


# -- a large graph ---------------------------------------------------------------------------


def large_workflow(tasks: int = 5000, width: int = 100) -> Workflow:
    """Layers of ``width`` tasks, each reading one task of the layer before and depending on
    another, as a long pipeline of wide steps would."""
    rng = random.Random(5000)
    wf = Workflow("large")
    for index in range(tasks):
        layer, slot = divmod(index, width)
        if layer == 0:
            wf.task(f"t{layer}_{slot}", "x.step")
            continue
        read, wait = rng.sample(range(width), 2)
        wf.task(
            f"t{layer}_{slot}",
            "x.step",
            params={"rows": f"${{t{layer - 1}_{read}.result}}"},
            depends_on=[f"t{layer - 1}_{wait}"],
        )
    return wf


def test_a_5000_task_graph_is_drawn_in_every_format() -> None:
    wf = large_workflow()
    states = list(TaskState)
    tasks = {spec.id: Status(states[i % len(states)]) for i, spec in enumerate(wf.specs)}
    graph = run_graph(wf, tasks, run_id="big", run_state=RunState.RUNNING)

    data = validated(to_json_data(graph))
    assert len(data["nodes"]) == 5000 and len(data["edges"]) == 2 * (5000 - 100)
    assert max(node["rank"] for node in data["nodes"]) == 49

    nodes, edges = parsed_mermaid(to_mermaid(graph))
    assert len(nodes) == 5000 and len(edges) == 2 * (5000 - 100)

    dot = to_dot(graph)
    assert dot.count("rank=same;") == 50 and "newrank=true" in dot
    drawn = svg_nodes(to_svg(graph))  # dot itself reads the DOT form back
    assert len(drawn) == 5000 + len(graph.counts())  # and the legend's
