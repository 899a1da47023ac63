"""The processes the store sees: workers registered and marked seen, the reconciler's passes."""

from __future__ import annotations

import secrets

from gleitzeit.store import Store
from gleitzeit.store.processes import RECONCILER, WORKER


def test_a_worker_registers_is_seen_and_registers_again_with_its_new_tasks(store: Store) -> None:
    name = f"celery@{secrets.token_hex(4)}"
    assert not store.process_seen(name)  # never registered

    store.register_process(name, WORKER, host="h1", pid=10, tasks=["a.one", "a.two"])
    assert store.process_seen(name)
    (found,) = [p for p in store.get_processes(WORKER) if p.name == name]
    assert (found.kind, found.host, found.pid, found.tasks) == (
        WORKER,
        "h1",
        10,
        ["a.one", "a.two"],
    )
    assert 0 <= found.age < 60 and found.last_seen >= found.started_at

    store.register_process(name, WORKER, host="h2", pid=11, tasks=["b.one"])
    (again,) = [p for p in store.get_processes(WORKER) if p.name == name]
    assert (again.host, again.pid, again.tasks) == ("h2", 11, ["b.one"])
    assert again.started_at >= found.started_at
    assert name not in {p.name for p in store.get_processes(RECONCILER)}


def test_reconciler_passes_add_up_their_repairs_and_keep_the_last_stuck_count(
    store: Store,
) -> None:
    before = store.get_processes(RECONCILER)
    repairs = dict(before[0].details.get("repairs", {})) if before else {}
    passes = before[0].details.get("passes", 0) if before else 0

    store.record_reconcile_pass({"republish": 2, "redispatch": 1}, 4, host="h", pid=1)
    store.record_reconcile_pass({"republish": 1}, 0, host="h", pid=2)

    (found,) = store.get_processes(RECONCILER)
    assert found.details["repairs"]["republish"] == repairs.get("republish", 0) + 3
    assert found.details["repairs"]["redispatch"] == repairs.get("redispatch", 0) + 1
    assert found.details["passes"] == passes + 2
    assert found.details["stuck"] == 0
    assert found.pid == 2 and found.age < 60
