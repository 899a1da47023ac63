"""Tasks for ``scripts/bench_fanin.py``: one no-op as a plain Celery task and as gleitzeit tasks.

The worker imports this module (``celery -A gleitzeit.worker worker -I scripts.bench_tasks``);
``shared_task`` and ``@gleitzeit.task`` both register on the worker's app. Names are explicit so
that the benchmark finds them whatever this module is imported as.
"""

from __future__ import annotations

from celery import shared_task

import gleitzeit

PLAIN_NOOP = "bench.plain_noop"
GZ_START = "bench.gz_start"
GZ_NOOP = "bench.gz_noop"
GZ_JOIN = "bench.gz_join"


@shared_task(name=PLAIN_NOOP)
def plain_noop(i: int) -> int:
    """The plain Celery contender: return the argument."""
    return i


@gleitzeit.task(name=GZ_START)
def gz_start() -> int:
    """The root of the fan-out."""
    return 0


@gleitzeit.task(name=GZ_NOOP)
def gz_noop(i: int) -> int:
    """One of the parallel no-ops: return the argument (the same work as ``plain_noop``)."""
    return i


@gleitzeit.task(name=GZ_JOIN)
def gz_join(values: list[int]) -> int:
    """The fan-in: every fanned-out result arrives here by reference."""
    return sum(values)
