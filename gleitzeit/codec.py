"""JSON in and out of the store: the only serialization gleitzeit accepts (never pickle)."""

from __future__ import annotations

import json
from typing import Any

from gleitzeit.errors import ResultError

DEFAULT_RESULT_LIMIT = 1024 * 1024


def dumps(value: Any) -> str:
    """Compact JSON; raise ``TypeError``/``ValueError`` for what JSON cannot hold."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def encode_result(value: Any, *, task_id: str, limit: int = DEFAULT_RESULT_LIMIT) -> str:
    """A task's result as stored JSON, or :class:`ResultError` saying why it cannot be."""
    try:
        text = dumps(value)
    except (TypeError, ValueError) as exc:
        raise ResultError(
            f"task {task_id!r} returned a result that is not JSON ({type(value).__name__}): {exc}"
        ) from exc
    size = len(text.encode())
    if size > limit:
        raise ResultError(
            f"task {task_id!r} returned {size} bytes of JSON, over the limit of {limit} bytes "
            "(GLEITZEIT_RESULT_LIMIT)"
        )
    return text
