"""Run ids by their start (``Client.resolve_run_id``): one index range on the primary key."""

from __future__ import annotations

import dataclasses
import uuid

from gleitzeit import Workflow
from gleitzeit.client import plan_run
from gleitzeit.store import Store
from gleitzeit.store.reads import prefix_range, run_ids_query


def _runs(store: Store, ids: list[str]) -> None:
    wf = Workflow("ids")
    wf.task("only", "tests.value", params={"value": 1})
    for run_id in ids:
        store.create_run(dataclasses.replace(plan_run(wf, {}), run_id=run_id))


def test_prefix_ranges_count_up_in_hex_digits_past_hyphens() -> None:
    assert prefix_range("0f3c") == ("0f3c", "0f3d")
    assert prefix_range("0f39") == ("0f39", "0f3a")
    assert prefix_range("0fff") == ("0fff", "1")
    assert prefix_range("ffff") == ("ffff", None)
    assert prefix_range("dec4b069-1") == ("dec4b069-1", "dec4b0692")
    assert prefix_range("run-x") == ("run-x", "run-y")
    assert prefix_range("") == ("", None)


def test_ids_are_found_by_their_start_and_only_those(store: Store) -> None:
    base = uuid.uuid4().hex[:6]
    ids = [
        f"{base}a0-1111-4111-8111-111111111111",
        f"{base}a0-2222-4222-8222-222222222222",
        f"{base}af-3333-4333-8333-333333333333",
        f"{base}b0-4444-4444-8444-444444444444",
    ]
    _runs(store, ids)

    assert store.run_ids_starting(base, limit=10) == ids
    assert store.run_ids_starting(f"{base}a", limit=10) == ids[:3]
    assert store.run_ids_starting(f"{base}a0-2", limit=10) == [ids[1]]
    assert store.run_ids_starting(f"{base}a0-", limit=10) == ids[:2]
    assert store.run_ids_starting(ids[3], limit=10) == [ids[3]]
    assert store.run_ids_starting(f"{base}a", limit=2) == ids[:2]
    assert store.run_ids_starting(f"{base}c", limit=10) == []
    assert store.run_ids_starting(f"{base}%", limit=10) == []  # LIKE's wildcards are literal


def test_the_lookup_reads_the_primary_key_index(store: Store) -> None:
    query = run_ids_query("ab", limit=6)
    with store.engine.connect() as conn:
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
            steps = " / ".join(str(row[-1]) for row in plan)
            assert "USING COVERING INDEX sqlite_autoindex_gz_runs_1 (id>? AND id<?)" in steps
            assert "TEMP B-TREE" not in steps  # the index gives the order
            return
        # a test's table is small enough for a sequential scan: ask whether the index serves
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        steps = " / ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
        assert "Index Only Scan using gz_runs_pkey" in steps, steps
        assert "Index Cond: ((id >= 'ab'::text) AND (id < 'ac'::text))" in steps, steps
        assert "Sort" not in steps, steps
