"""References between tasks: ``${task.result.path}``, ``$<task.result>``, ``${inputs.name}``.

Pure functions from data to data: parsing finds every reference (and every malformed
one) in a task's params; resolution substitutes values fetched by the caller.

- A string that is exactly one reference is replaced by the referenced value, keeping
  its type. A reference inside a longer string is rendered into it: strings as they
  are, anything else as JSON.
- ``$${`` is a literal ``${`` and ``$$<`` a literal ``$<``.
- Paths reach into dicts and lists: ``.rows.0.id`` or ``.rows[0].id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gleitzeit.errors import ReferenceResolutionError

INPUTS = "inputs"
RESULT = "result"

_NAME = r"[A-Za-z0-9_-]+"
_EXPR = re.compile(rf"^\s*(?P<source>{_NAME})(?P<rest>(?:\.{_NAME}|\[\d+\])*)\s*$")
_SEGMENT = re.compile(rf"\.(?P<key>{_NAME})|\[(?P<index>\d+)\]")
_CLOSERS = {"{": "}", "<": ">"}

PathSegment = str | int


@dataclass(frozen=True)
class Reference:
    """One reference: ``source`` is a task id or ``"inputs"``; ``path`` reaches inside."""

    source: str
    path: tuple[PathSegment, ...]
    text: str

    @property
    def is_input(self) -> bool:
        return self.source == INPUTS

    @property
    def input_name(self) -> str:
        return str(self.path[0])


@dataclass(frozen=True)
class Template:
    """A parsed string: literal text and references, in order."""

    parts: tuple[str | Reference, ...]

    @property
    def whole(self) -> Reference | None:
        """The reference when the string is exactly one reference, else ``None``."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Reference):
            return self.parts[0]
        return None

    @property
    def references(self) -> list[Reference]:
        return [p for p in self.parts if isinstance(p, Reference)]


class MalformedReference(ValueError):
    """Raised by :func:`parse_template` with a message naming the bad reference."""


def format_reference(source: str, path: tuple[PathSegment, ...] = ()) -> str:
    """The canonical ``${...}`` spelling of a task result reference built in Python."""
    text = f"{source}.{RESULT}"
    for seg in path:
        text += f"[{seg}]" if isinstance(seg, int) else f".{seg}"
    return "${" + text + "}"


def _parse_expression(inner: str, text: str) -> Reference:
    match = _EXPR.match(inner)
    if match is None:
        raise MalformedReference(
            f"malformed reference {text!r}: expected task.result[.key|[index]...] "
            "or inputs.name[...]"
        )
    source = match["source"]
    path: list[PathSegment] = []
    for seg in _SEGMENT.finditer(match["rest"]):
        path.append(int(seg["index"]) if seg["index"] is not None else seg["key"])
    if source == INPUTS:
        if not path or not isinstance(path[0], str):
            raise MalformedReference(f"malformed reference {text!r}: name an input, inputs.NAME")
        return Reference(INPUTS, tuple(path), text)
    if not path or path[0] != RESULT:
        raise MalformedReference(
            f"malformed reference {text!r}: a task is referenced as {source}.result"
        )
    return Reference(source, tuple(path[1:]), text)


def parse_template(text: str) -> Template:
    """Split ``text`` into literals and references; raise :class:`MalformedReference`."""
    parts: list[str | Reference] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        nxt = text[i + 1 : i + 2]
        if char == "$" and nxt == "$" and text[i + 2 : i + 3] in _CLOSERS:
            literal.append("$" + text[i + 2])
            i += 3
            continue
        if char == "$" and nxt in _CLOSERS:
            end = text.find(_CLOSERS[nxt], i + 2)
            if end < 0:
                raise MalformedReference(f"unclosed reference in {text!r} at position {i}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_expression(text[i + 2 : end], text[i : end + 1]))
            i = end + 1
            continue
        literal.append(char)
        i += 1
    if literal:
        parts.append("".join(literal))
    return Template(tuple(parts))


def _walk_strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_strings(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk_strings(item, f"{where}[{index}]")


def find_references(value: Any, where: str = "params") -> tuple[list[Reference], list[str]]:
    """Every reference in a nested value, and a problem for every malformed one."""
    found: list[Reference] = []
    problems: list[str] = []
    for location, text in _walk_strings(value, where):
        if "$" not in text:
            continue
        try:
            found.extend(parse_template(text).references)
        except MalformedReference as exc:
            problems.append(f"{location}: {exc}")
    return found, problems


def follow(root: Any, ref: Reference) -> Any:
    """Reach ``ref.path`` inside ``root``; raise naming the reference and the missing step."""
    value = root
    path = ref.path
    for depth, seg in enumerate(path):
        try:
            if isinstance(value, list):
                value = value[int(seg)]
            elif isinstance(value, dict):
                value = value[str(seg)]
            else:
                raise TypeError(type(value).__name__)
        except (IndexError, KeyError, ValueError, TypeError):
            reached = ".".join(str(s) for s in path[:depth]) or "(top)"
            raise ReferenceResolutionError(
                f"reference {ref.text}: no {seg!r} in {reached} (a {type(value).__name__})"
            ) from None
    return value


def _render(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resolve(value: Any, lookup: Callable[[Reference], Any]) -> Any:
    """Substitute every reference in ``value``; ``lookup`` returns a reference's value."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        template = parse_template(value)
        whole = template.whole
        if whole is not None:
            return lookup(whole)
        return "".join(
            part if isinstance(part, str) else _render(lookup(part)) for part in template.parts
        )
    if isinstance(value, dict):
        return {key: resolve(item, lookup) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(item, lookup) for item in value]
    return value


def lookup_in(
    inputs: dict[str, Any], results: dict[str, Any], *, skipped: Iterable[str] = ()
) -> Callable[[Reference], Any]:
    """A ``lookup`` for :func:`resolve` over a run's inputs and stored task results.

    A reference to a ``skipped`` task yields ``None``, whatever its path.
    """
    read_as_none = frozenset(skipped)

    def lookup(ref: Reference) -> Any:
        if ref.is_input:
            if ref.input_name not in inputs:
                raise ReferenceResolutionError(
                    f"reference {ref.text}: the run has no input {ref.input_name!r}"
                )
            return follow(inputs, ref)
        if ref.source in read_as_none:
            return None
        if ref.source not in results:
            raise ReferenceResolutionError(
                f"reference {ref.text}: task {ref.source!r} has no stored result"
            )
        return follow(results[ref.source], ref)

    return lookup
