"""A workflow or a run as a picture: mermaid, DOT, SVG (drawn by Graphviz's ``dot``) or JSON.

Pure functions from plain data: :func:`definition_graph` and :func:`run_graph` turn a
definition (and the states of a run's tasks) into a :class:`Graph` of nodes and edges,
laid out in the resolver's layers; :func:`to_mermaid`, :func:`to_dot` and :func:`to_json`
draw it as text. Only :func:`to_svg` leaves the process: it pipes the DOT text to ``dot``.

Every value that comes from a user (ids, task names, errors) reaches a drawing through one
escaping function per format, so none can end a label or a string early: DOT strings are
quoted and escaped, mermaid nodes are named ``n0``, ``n1``... with their labels quoted and
entity-escaped, and JSON is escaped by the encoder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any, Protocol

import networkx as nx

from gleitzeit.errors import GraphFormatError, GraphvizError
from gleitzeit.resolver import DependencyResolver
from gleitzeit.states import RunState, TaskState
from gleitzeit.strategies import compensation_id
from gleitzeit.workflow import Workflow

FORMATS = ("mermaid", "dot", "svg", "json")
#: the version of the JSON form (``"version"``); it changes only when a field changes meaning
JSON_VERSION = 1
#: errors longer than this are cut short in tooltips and in the JSON form
ERROR_PREVIEW = 500
#: from this many nodes on, ``dot`` is asked to spend less effort on crossings and curves
LARGE_GRAPH = 500

GRAPHVIZ_MISSING = (
    "drawing SVG needs Graphviz's dot, which is not on PATH: install Graphviz "
    "(Debian/Ubuntu: apt-get install graphviz, macOS: brew install graphviz), "
    "or use --format mermaid, dot or json"
)


class NodeKind(str, Enum):
    """What a node of the graph stands for; each kind has its own shape."""

    #: a task of the workflow
    TASK = "task"
    #: a task that runs only in the place of another that failed (``on_failure="alternative:<id>"``)
    ALTERNATIVE = "alternative"
    #: ``<task>:compensate``: undoes a task that succeeded, when its run fails (a saga)
    COMPENSATION = "compensation"

    def __str__(self) -> str:
        return self.value


class EdgeKind(str, Enum):
    """Why an edge joins two nodes; each kind is drawn its own way."""

    #: the target depends on the source (a reference or ``depends_on``)
    DEPENDENCY = "dependency"
    #: the target runs in the source's place if the source fails
    ALTERNATIVE = "alternative"
    #: the target undoes the source
    COMPENSATION = "compensation"

    def __str__(self) -> str:
        return self.value


class HasState(Protocol):
    """What a drawing needs of a run's task (the store's ``TaskStatus`` and ``TaskRecord``
    have it)."""

    @property
    def state(self) -> TaskState: ...

    @property
    def attempt(self) -> int: ...

    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True)
class Node:
    """One task (or, later, a map, a wait or a loop) as drawn."""

    id: str
    #: the Celery task it runs
    name: str
    kind: NodeKind = NodeKind.TASK
    #: ``None`` in a definition's graph, which has no run
    state: TaskState | None = None
    attempts: int = 0
    error: str | None = None
    #: its layer: 0 for tasks that wait for nothing, else one more than its latest parent's
    rank: int = 0
    #: the task an alternative stands in for, or that a compensation undoes
    of: str | None = None
    #: ``(finished, total)`` items of a map, drawn as ``parse 97/100``
    items: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        """The text drawn in the node: its id, a map's items, a retried task's attempts."""
        text = self.id
        if self.items is not None:
            text += f" {self.items[0]}/{self.items[1]}"
        if self.attempts > 1:
            text += f" ({self.attempts} attempts)"
        return text

    @property
    def tooltip(self) -> str:
        """What hovering over the node shows: kind, Celery task, state, attempt, error."""
        lines = [f"{self.id} ({self.kind.value}): {self.name}"]
        if self.state is not None:
            lines.append(f"{self.state.value}, attempt {self.attempts}")
        if self.error:
            lines.append(self.error)
        return "\n".join(lines)


@dataclass(frozen=True)
class Edge:
    """``source`` -> ``target``: a dependency, an alternative or a compensation."""

    source: str
    target: str
    kind: EdgeKind = EdgeKind.DEPENDENCY


@dataclass(frozen=True)
class Graph:
    """A workflow's (or a run's) nodes, in layer order, and edges."""

    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    run_id: str | None = None
    run_state: RunState | None = None

    def counts(self) -> dict[TaskState, int]:
        """How many nodes are in each state, in the order of :data:`STATE_COLORS`."""
        found = [node.state for node in self.nodes if node.state is not None]
        return {state: found.count(state) for state in STATE_COLORS if state in found}

    def kinds(self) -> dict[NodeKind, int]:
        """How many nodes are of each kind."""
        found = [node.kind for node in self.nodes]
        return {kind: found.count(kind) for kind in NodeKind if kind in found}


# -- building ------------------------------------------------------------------------------


def definition_graph(workflow: Workflow) -> Graph:
    """The graph of a workflow definition, with no states; raises
    ``WorkflowValidationError`` for a workflow that is not valid."""
    return _build(workflow, None)


def run_graph(
    workflow: Workflow,
    tasks: Mapping[str, HasState],
    *,
    run_id: str | None = None,
    run_state: RunState | None = None,
) -> Graph:
    """The graph of a run of ``workflow`` whose tasks are ``tasks`` (by task id); its
    compensations appear once they exist as tasks of the run."""
    return _build(workflow, tasks, run_id=run_id, run_state=run_state)


def _build(
    workflow: Workflow,
    tasks: Mapping[str, HasState] | None,
    *,
    run_id: str | None = None,
    run_state: RunState | None = None,
) -> Graph:
    resolver = DependencyResolver(workflow)
    resolver.validate()
    ranks = _ranks(resolver.flow())
    nodes: list[Node] = []
    edges = [Edge(parent, child) for parent, child in resolver.graph.edges]
    for spec in workflow.specs:
        primary = resolver.stands_in_for.get(spec.id)
        kind = NodeKind.TASK if primary is None else NodeKind.ALTERNATIVE
        nodes.append(_node(spec.id, spec.name, kind, ranks[spec.id], primary, tasks))
        if primary is not None:
            edges.append(Edge(primary, spec.id, EdgeKind.ALTERNATIVE))
    for spec in workflow.specs:
        undo = compensation_id(spec.id)
        if spec.compensate is not None and (tasks is None or undo in tasks):
            rank = ranks[spec.id] + 1
            nodes.append(_node(undo, spec.compensate, NodeKind.COMPENSATION, rank, spec.id, tasks))
            edges.append(Edge(spec.id, undo, EdgeKind.COMPENSATION))
    order = {node.id: (node.rank, index) for index, node in enumerate(nodes)}
    nodes.sort(key=lambda node: order[node.id])
    edges.sort(key=lambda edge: (order[edge.source], order[edge.target]))
    return Graph(workflow.name, tuple(nodes), tuple(edges), run_id=run_id, run_state=run_state)


def _ranks(flow: nx.DiGraph) -> dict[str, int]:
    """Each task's topological generation in the order tasks may run."""
    return {
        node: rank
        for rank, generation in enumerate(nx.topological_generations(flow))
        for node in generation
    }


def _node(
    node_id: str,
    name: str,
    kind: NodeKind,
    rank: int,
    of: str | None,
    tasks: Mapping[str, HasState] | None,
) -> Node:
    status = None if tasks is None else tasks.get(node_id)
    if status is None:
        return Node(node_id, name, kind, rank=rank, of=of)
    return Node(
        node_id,
        name,
        kind,
        state=status.state,
        attempts=status.attempt,
        error=_preview(status.error),
        rank=rank,
        of=of,
    )


def _preview(text: str | None) -> str | None:
    if text is None or len(text) <= ERROR_PREVIEW:
        return text
    return text[: ERROR_PREVIEW - 3] + "..."


# -- how things look -----------------------------------------------------------------------

#: fill and border of each task state, in the order the legend lists them
STATE_COLORS: dict[TaskState, tuple[str, str]] = {
    TaskState.PENDING: ("#f3f4f6", "#9ca3af"),
    TaskState.QUEUED: ("#dbeafe", "#3b82f6"),
    TaskState.RUNNING: ("#93c5fd", "#1d4ed8"),
    TaskState.RETRYING: ("#fde68a", "#b45309"),
    TaskState.SUCCEEDED: ("#bbf7d0", "#15803d"),
    TaskState.FAILED: ("#fecaca", "#b91c1c"),
    TaskState.SKIPPED: ("#ffffff", "#6b7280"),
    TaskState.BLOCKED: ("#fed7aa", "#c2410c"),
    TaskState.CANCELLED: ("#d1d5db", "#4b5563"),
}
#: a definition's nodes, which have no state
NO_STATE = ("#ffffff", "#374151")

#: each kind's shape: Graphviz's name, and mermaid's brackets around a quoted label
KIND_SHAPES: dict[NodeKind, tuple[str, str, str]] = {
    NodeKind.TASK: ("box", "(", ")"),
    NodeKind.ALTERNATIVE: ("hexagon", "{{", "}}"),
    NodeKind.COMPENSATION: ("cds", ">", "]"),
}
KIND_DESCRIPTIONS: dict[NodeKind, str] = {
    NodeKind.TASK: "a task",
    NodeKind.ALTERNATIVE: "runs only if the task it stands in for fails",
    NodeKind.COMPENSATION: "undoes a task when its run fails",
}
#: how each kind of edge is drawn in DOT, and the arrow and label in mermaid
EDGE_STYLES: dict[EdgeKind, tuple[str, str]] = {
    EdgeKind.DEPENDENCY: ("", "-->"),
    EdgeKind.ALTERNATIVE: (
        'style=dashed, color="#b45309", label="if it fails"',
        '-.->|"if it fails"|',
    ),
    EdgeKind.COMPENSATION: ('style=dotted, color="#6b7280", label="undo"', '-.->|"undo"|'),
}


def _colors(state: TaskState | None) -> tuple[str, str]:
    return NO_STATE if state is None else STATE_COLORS[state]


# -- DOT -----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def visible(text: str) -> str:
    """``text`` with CR and CR LF as LF, and other control characters as their pictures
    (U+0001 as U+2401): SVG cannot hold them, and a picture keeps two ids apart."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(lambda found: chr(0x2400 + min(ord(found[0]), 0x21)), text)


def dot_string(text: str, *, tooltip: bool = False) -> str:
    """``text`` as a quoted DOT string that shows exactly ``text`` as a label (or, with
    ``tooltip``, as a tooltip), and ends where its closing quote is.

    Quotes are escaped, ``&`` written ``&amp;`` (Graphviz reads entities in strings) and
    line breaks ``\\n``. A backslash is doubled, so that none starts an escape (``\\N``,
    the node's name) or escapes the closing quote; Graphviz unescapes a tooltip twice,
    so there it is doubled twice.
    """
    backslash = "\\\\\\\\" if tooltip else "\\\\"
    text = visible(text).replace("\\", backslash).replace('"', '\\"').replace("&", "&amp;")
    return '"' + text.replace("\n", "\\n") + '"'


def to_dot(graph: Graph, *, rankdir: str = "LR") -> str:
    """The graph as Graphviz DOT: layers left to right (``rankdir="TB"``: top to bottom),
    one ``rank=same`` group per layer, nodes filled by state, shaped by kind, a legend."""
    title = graph.name if graph.run_id is None else f"{graph.name}: run {graph.run_id}"
    if graph.run_state is not None:
        title += f" ({graph.run_state.value})"
    large = len(graph.nodes) >= LARGE_GRAPH
    lines = [
        f"digraph {dot_string(graph.name)} {{",
        f"  graph [rankdir={'TB' if rankdir == 'TB' else 'LR'}, newrank=true, "
        f"label={dot_string(title)}, labelloc=t, fontname=Helvetica"
        + (", mclimit=0.01, nslimit=0.02, nslimit1=0.02, splines=line" if large else "")
        + "];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=11];',
        '  edge [color="#4b5563", fontname=Helvetica, fontsize=9];',
    ]
    lines += (f"  {dot_string(node.id)} [{_dot_node(node)}];" for node in graph.nodes)
    lines += _dot_layers(graph.nodes)
    for edge in graph.edges:
        style = EDGE_STYLES[edge.kind][0]
        link = f"  {dot_string(edge.source)} -> {dot_string(edge.target)}"
        lines.append(f"{link} [{style}];" if style else f"{link};")
    lines += _dot_legend(graph)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_node(node: Node) -> str:
    fill, border = _colors(node.state)
    shape = KIND_SHAPES[node.kind][0]
    style = ["filled"]
    if node.kind is NodeKind.TASK:
        style.append("rounded")
    if node.state is TaskState.SKIPPED:
        style.append("dashed")
    attributes = [
        f"label={dot_string(node.label)}",
        f"tooltip={dot_string(node.tooltip, tooltip=True)}",
        f"shape={shape}",
        f'style="{",".join(style)}"',
        f'fillcolor="{fill}"',
        f'color="{border}"',
        f'class="{_css_class(node)}"',
    ]
    if node.state is TaskState.SKIPPED:
        attributes.append('fontcolor="#6b7280"')
    return ", ".join(attributes)


def _css_class(node: Node) -> str:
    state = "none" if node.state is None else node.state.value
    return f"kind-{node.kind.value} state-{state}"


def _dot_layers(nodes: Iterable[Node]) -> list[str]:
    layers: dict[int, list[str]] = {}
    for node in nodes:
        layers.setdefault(node.rank, []).append(dot_string(node.id))
    return [
        f"  {{ rank=same; {'; '.join(members)}; }}"
        for _, members in sorted(layers.items())
        if len(members) > 1
    ]


def _dot_legend(graph: Graph) -> list[str]:
    """A legend of the states and kinds the graph has; its nodes' ids hold a space, which
    no task id does, so none can be taken for a task's."""
    entries: list[str] = []
    for state, count in graph.counts().items():
        fill, border = STATE_COLORS[state]
        style = "filled,rounded,dashed" if state is TaskState.SKIPPED else "filled,rounded"
        entries.append(
            f'    "legend {state.value}" [label="{state.value} ({count})", style="{style}", '
            f'fillcolor="{fill}", color="{border}"];'
        )
    for kind in graph.kinds():
        if kind is not NodeKind.TASK:
            entries.append(
                f'    "legend {kind.value}" [label="{kind.value}", shape={KIND_SHAPES[kind][0]}, '
                f'style=filled, fillcolor="#ffffff"];'
            )
    if not entries:
        return []
    return [
        "  subgraph cluster_legend {",
        '    label="legend"; style=dashed; color="#9ca3af";',
        *entries,
        "  }",
    ]


# -- mermaid -------------------------------------------------------------------------------

_MERMAID_PLAIN = re.compile(r"[A-Za-z0-9 _.,:/()+=?!@$^~'*-]")


def mermaid_text(text: str) -> str:
    """``text`` for a quoted mermaid label: every character that could mean something to
    mermaid or HTML (quotes, brackets, ``#``, ``<``, ``&``, line breaks, ...) as an entity
    (``#34;``), so a label always ends where its quote does."""
    return "".join(
        char if _MERMAID_PLAIN.fullmatch(char) else f"#{ord(char)};" for char in visible(text)
    )


def to_mermaid(graph: Graph) -> str:
    """The graph as a mermaid flowchart, left to right; nodes are ``n0``, ``n1``... in
    layer order (a task's id is in its label), classed by state, shaped by kind."""
    names = {node.id: f"n{index}" for index, node in enumerate(graph.nodes)}
    lines = ["flowchart LR"]
    for node in graph.nodes:
        _, left, right = KIND_SHAPES[node.kind]
        state = "none" if node.state is None else node.state.value
        lines.append(f'  {names[node.id]}{left}"{mermaid_text(node.label)}"{right}:::{state}')
    for edge in graph.edges:
        arrow = EDGE_STYLES[edge.kind][1]
        lines.append(f"  {names[edge.source]} {arrow} {names[edge.target]}")
    lines += _mermaid_legend(graph)
    lines += _mermaid_classes()
    return "\n".join(lines) + "\n"


def _mermaid_legend(graph: Graph) -> list[str]:
    entries = [
        f'    l{index}("{state.value} ({count})"):::{state.value}'
        for index, (state, count) in enumerate(graph.counts().items())
    ]
    for kind in graph.kinds():
        if kind is not NodeKind.TASK:
            _, left, right = KIND_SHAPES[kind]
            entries.append(f'    l{len(entries)}{left}"{kind.value}"{right}:::none')
    if not entries:
        return []
    title = "legend"
    if graph.run_state is not None:
        title = f"run {graph.run_state.value}"
    return [f'  subgraph legend["{mermaid_text(title)}"]', *entries, "  end"]


def _mermaid_classes() -> list[str]:
    lines = []
    for state, (fill, border) in STATE_COLORS.items():
        dashed = ",stroke-dasharray:4 3,color:#6b7280" if state is TaskState.SKIPPED else ""
        lines.append(f"  classDef {state.value} fill:{fill},stroke:{border}{dashed}")
    lines.append(f"  classDef none fill:{NO_STATE[0]},stroke:{NO_STATE[1]}")
    return lines


# -- JSON ----------------------------------------------------------------------------------


def to_json_data(graph: Graph) -> dict[str, Any]:
    """The graph as plain data (the ``json`` format; ``graph.schema.json`` describes it)."""
    run = None
    if graph.run_id is not None:
        state = None if graph.run_state is None else graph.run_state.value
        run = {"id": graph.run_id, "state": state}
    return {
        "version": JSON_VERSION,
        "workflow": graph.name,
        "run": run,
        "nodes": [_json_node(node) for node in graph.nodes],
        "edges": [
            {"source": edge.source, "target": edge.target, "kind": edge.kind.value}
            for edge in graph.edges
        ],
        "legend": _json_legend(graph),
    }


def _json_legend(graph: Graph) -> dict[str, Any]:
    """Every state and kind with how it is drawn and how many nodes have it."""
    states, kinds = graph.counts(), graph.kinds()
    return {
        "states": [
            {"state": state.value, "fill": fill, "border": border, "count": states.get(state, 0)}
            for state, (fill, border) in STATE_COLORS.items()
        ],
        "kinds": [
            {
                "kind": kind.value,
                "shape": KIND_SHAPES[kind][0],
                "description": KIND_DESCRIPTIONS[kind],
                "count": kinds.get(kind, 0),
            }
            for kind in NodeKind
        ],
    }


def _json_node(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "name": node.name,
        "kind": node.kind.value,
        "state": None if node.state is None else node.state.value,
        "label": node.label,
        "attempts": node.attempts,
        "error": node.error,
        "rank": node.rank,
        "of": node.of,
        "items": None if node.items is None else {"done": node.items[0], "total": node.items[1]},
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the ``json`` format (``gleitzeit/graph.schema.json``)."""
    text = resources.files("gleitzeit").joinpath("graph.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def to_json(graph: Graph) -> str:
    return json.dumps(to_json_data(graph)) + "\n"


# -- SVG -----------------------------------------------------------------------------------


def to_svg(graph: Graph, *, dot: str = "dot") -> str:
    """The graph drawn as SVG by Graphviz's ``dot`` (found on ``PATH``); raises
    :class:`GraphvizError` naming what to install when it is not there."""
    # the dot program itself, not a binding: the graphviz package on PyPI runs this same
    # program, and pygraphviz needs Graphviz's headers and a compiler to install
    found = shutil.which(dot)
    if found is None:
        raise GraphvizError(GRAPHVIZ_MISSING)
    try:
        drawn = subprocess.run(
            [found, "-Tsvg"],
            input=to_dot(graph).encode(),
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        raise GraphvizError(f"could not run {found}: {exc}") from exc
    if drawn.returncode != 0:
        reason = drawn.stderr.decode(errors="replace").strip().splitlines()
        raise GraphvizError(
            f"{found} failed (exit status {drawn.returncode})"
            + (f": {reason[0]}" if reason else "")
        )
    return drawn.stdout.decode()


# -- one entry point -----------------------------------------------------------------------

_RENDERERS: dict[str, Callable[[Graph], str]] = {
    "mermaid": to_mermaid,
    "dot": to_dot,
    "svg": to_svg,
    "json": to_json,
}


def check_format(format: str) -> None:
    """Raise :class:`GraphFormatError` unless ``format`` is one gleitzeit draws."""
    if format not in _RENDERERS:
        raise GraphFormatError(
            f"unknown graph format {format!r}: choose one of {', '.join(FORMATS)}"
        )


def render(graph: Graph, format: str) -> str:
    """The graph in ``format``: ``"mermaid"``, ``"dot"``, ``"svg"`` or ``"json"``."""
    check_format(format)
    return _RENDERERS[format](graph)
