"""Named points where a test can make a process die, to prove recovery.

``GLEITZEIT_CRASH_AT=after_claim_commit`` (comma-separated names) makes the process
``SIGKILL`` itself the first time it reaches that point, as a power cut would. Unset, a
point costs one set lookup. The points:

- ``after_claim_commit``: claims are committed, their messages not yet published;
- ``after_publish``: messages are published, the ledger does not yet say so;
- ``after_start_commit``: an attempt is marked running, its body not yet called.
"""

from __future__ import annotations

import os
import signal

ENV = "GLEITZEIT_CRASH_AT"
POINTS = frozenset({"after_claim_commit", "after_publish", "after_start_commit"})

_armed = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())
unknown = _armed - POINTS
if unknown:
    raise ValueError(f"{ENV} names unknown crash points {sorted(unknown)}; known: {sorted(POINTS)}")
del unknown


def crash_point(name: str) -> None:
    """Die here, at once and without cleanup, if the point ``name`` is armed."""
    if name in _armed:
        os.kill(os.getpid(), signal.SIGKILL)
