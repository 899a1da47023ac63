"""A daily sales report: fetch three sources in parallel, parse each, join, report.

gleitzeit run examples/etl.py                       # embedded, no server
gleitzeit run examples/etl.py -i day=2026-11-20     # another day
gleitzeit submit examples/etl.py --wait             # on your Celery workers
"""

from __future__ import annotations

from examples.etl_tasks import fetch, join, parse, report
from gleitzeit import Workflow

SOURCES = ["north", "south", "west"]

workflow = Workflow("daily-sales")
parsed = []
for source in SOURCES:
    raw = workflow.task(f"fetch_{source}", fetch, params={"source": source})
    parsed.append(
        workflow.task(f"parse_{source}", parse, params={"raw": raw.result, "source": source})
    )
rows = workflow.task(
    "join", join, params={"parts": [p.result for p in parsed], "day": "${inputs.day}"}
)
workflow.task("report", report, params={"rows": rows.result, "day": "${inputs.day}"})

inputs = {"day": "2026-11-21"}
