"""gleitzeit: durable task graphs for Celery."""

from gleitzeit.client import Client, Run
from gleitzeit.errors import (
    DispatchFailure,
    GleitzeitError,
    GraphChanged,
    GraphFormatError,
    GraphvizError,
    IdempotencyConflict,
    InvalidTransition,
    ParamsError,
    ReferenceResolutionError,
    ResultError,
    RunControlError,
    RunFailed,
    RunNotFound,
    RunTimeout,
    ScheduleConflict,
    ScheduleError,
    ScheduleNotFound,
    StorageFailure,
    UnknownTask,
    WorkerLost,
    WorkflowFailed,
    WorkflowValidationError,
)
from gleitzeit.policy import Backoff
from gleitzeit.resolver import DependencyResolver
from gleitzeit.settings import Settings
from gleitzeit.states import RunState, TaskState
from gleitzeit.workflow import TaskHandle, Workflow, task

__all__ = [
    "Backoff",
    "Client",
    "DependencyResolver",
    "DispatchFailure",
    "GleitzeitError",
    "GraphChanged",
    "GraphFormatError",
    "GraphvizError",
    "IdempotencyConflict",
    "InvalidTransition",
    "ParamsError",
    "ReferenceResolutionError",
    "ResultError",
    "Run",
    "RunControlError",
    "RunFailed",
    "RunNotFound",
    "RunState",
    "RunTimeout",
    "ScheduleConflict",
    "ScheduleError",
    "ScheduleNotFound",
    "Settings",
    "StorageFailure",
    "TaskHandle",
    "TaskState",
    "UnknownTask",
    "WorkerLost",
    "Workflow",
    "WorkflowFailed",
    "WorkflowValidationError",
    "task",
]
