"""Retry policy as pure functions: how long to wait, and whether an error is retried."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between attempts: ``base * factor**(n-1)``, capped, with jitter.

    With ``jitter`` the delay is drawn uniformly from ``[delay/2, delay]`` so that tasks
    failing together do not retry together.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        for name in ("base", "factor", "cap"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise TypeError(f"backoff {name} must be a number, got {number!r}")
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"backoff {name} must be a finite number >= 0, got {number!r}")
            # 2 and 2.0 are the same policy and must give the same graph hash
            object.__setattr__(self, name, float(number))
        if not isinstance(self.jitter, bool):
            raise TypeError(f"backoff jitter must be true or false, got {self.jitter!r}")

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: its deep copy cost a fifth of submitting a large graph
        return {"base": self.base, "factor": self.factor, "cap": self.cap, "jitter": self.jitter}

    @classmethod
    def coerce(cls, value: Backoff | Mapping[str, Any] | float | int | None) -> Backoff:
        """Accept a ``Backoff``, a dict of its fields, a base delay in seconds, or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, Backoff):
            return value
        if isinstance(value, bool):
            raise TypeError(f"backoff must be seconds or a Backoff, not {value!r}")
        if isinstance(value, (int, float)):
            return cls(base=float(value))
        unknown = set(value) - {"base", "factor", "cap", "jitter"}
        if unknown:
            raise TypeError(f"backoff has unknown fields {sorted(unknown)}")
        return cls(**value)


def compute_backoff(
    failed_attempts: int, backoff: Backoff, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait before the next attempt, after ``failed_attempts`` failures (>= 1)."""
    exponent = max(failed_attempts - 1, 0)
    try:
        delay = min(backoff.cap, backoff.base * backoff.factor**exponent)
    except OverflowError:
        delay = backoff.cap
    if backoff.jitter and delay > 0:
        draw = (rng or random).uniform(0.5, 1.0)
        delay *= draw
    return max(delay, 0.0)


#: gleitzeit's own exceptions live here and are exported from the package, whose name they go by
_ERRORS_MODULE = "gleitzeit.errors"


def exception_names(exc: BaseException) -> set[str]:
    """Every name an exception answers to: its classes' simple and qualified names."""
    names: set[str] = set()
    for cls in type(exc).__mro__:
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
        names.add(type_name(cls))
    return names


def type_name(exc_type: type[BaseException]) -> str:
    """How an exception class is named in ``retry_on`` and in a task's error: ``module.QualName``
    (``gleitzeit.X`` for gleitzeit's own, as the package exports them)."""
    module = exc_type.__module__
    if module == "builtins":
        return exc_type.__qualname__
    if module == _ERRORS_MODULE:
        return f"gleitzeit.{exc_type.__qualname__}"
    return f"{module}.{exc_type.__qualname__}"


def should_retry(
    exc: BaseException, *, attempt: int, retries: int, retry_on: Iterable[str]
) -> bool:
    """Whether attempt number ``attempt`` (1-based) that raised ``exc`` gets another try.

    An empty ``retry_on`` retries every ``Exception``.
    """
    if attempt > retries:
        return False
    wanted = set(retry_on)
    if not wanted:
        return isinstance(exc, Exception)
    return bool(wanted & exception_names(exc))
