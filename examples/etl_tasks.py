"""Tasks of the example ETL: ordinary Celery tasks, made gleitzeit tasks by ``@task``.

Workers import them with ``celery -A gleitzeit.worker worker -I examples.etl_tasks``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from gleitzeit import task

DATA = Path(__file__).parent / "data"


@task(name="etl.fetch", retries=3, backoff=0.5, retry_on=[OSError], timeout=30)
def fetch(source: str) -> str:
    """Fetch one source's raw CSV (here: a file beside the example; in life, an HTTP GET)."""
    return (DATA / f"sales-{source}.csv").read_text()


@task(name="etl.parse")
def parse(raw: str, source: str) -> list[dict[str, Any]]:
    """Parse CSV text into typed rows tagged with their source."""
    rows = csv.DictReader(io.StringIO(raw))
    return [
        {
            "source": source,
            "day": row["day"],
            "product": row["product"],
            "units": int(row["units"]),
            "revenue": round(int(row["units"]) * float(row["price"]), 2),
        }
        for row in rows
    ]


@task(name="etl.join")
def join(parts: list[list[dict[str, Any]]], day: str) -> list[dict[str, Any]]:
    """All sources' rows for ``day``, in one list."""
    return [row for part in parts for row in part if row["day"] == day]


@task(name="etl.report")
def report(rows: list[dict[str, Any]], day: str) -> dict[str, Any]:
    """Totals per product and per source for the day."""
    by_product: dict[str, float] = {}
    by_source: dict[str, float] = {}
    for row in rows:
        by_product[row["product"]] = round(by_product.get(row["product"], 0) + row["revenue"], 2)
        by_source[row["source"]] = round(by_source.get(row["source"], 0) + row["revenue"], 2)
    return {
        "day": day,
        "revenue": round(sum(by_source.values()), 2),
        "by_product": by_product,
        "by_source": by_source,
    }
