"""Crash points: off by default, fatal where armed, strict about names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gleitzeit.crashpoints import POINTS, crash_point


def python(code: str, armed: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GLEITZEIT_CRASH_AT"}
    if armed is not None:
        env["GLEITZEIT_CRASH_AT"] = armed
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_unarmed_points_do_nothing() -> None:
    for name in POINTS:
        crash_point(name)


@pytest.mark.parametrize("point", sorted(POINTS))
def test_an_armed_point_kills_the_process_there(point: str) -> None:
    code = (
        "from gleitzeit.crashpoints import crash_point\n"
        "print('before', flush=True)\n"
        f"crash_point({point!r})\n"
        "print('after', flush=True)\n"
    )
    done = python(code, point)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "before\n"


def test_an_unknown_point_name_is_refused() -> None:
    done = python("import gleitzeit.crashpoints", "after_lunch")
    assert done.returncode == 1
    assert "unknown crash points ['after_lunch']" in done.stderr
