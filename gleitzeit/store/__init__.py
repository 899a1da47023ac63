"""The SQL store: schema, migrations and operations (each one transaction)."""

from gleitzeit.store.records import Dispatch, ErrorInfo, RunPlan, RunRecord, TaskRecord
from gleitzeit.store.store import Store

__all__ = ["Dispatch", "ErrorInfo", "RunPlan", "RunRecord", "Store", "TaskRecord"]
