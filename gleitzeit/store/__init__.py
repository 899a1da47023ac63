"""The SQL store: schema, migrations and operations (each one transaction)."""

from gleitzeit.store.records import (
    Dispatch,
    ErrorInfo,
    RunPlan,
    RunProgress,
    RunRecord,
    TaskRecord,
)
from gleitzeit.store.store import Store

__all__ = ["Dispatch", "ErrorInfo", "RunPlan", "RunProgress", "RunRecord", "Store", "TaskRecord"]
