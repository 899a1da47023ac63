"""gleitzeit: durable task graphs for Celery."""

from gleitzeit.client import Client, Run
from gleitzeit.errors import (
    GleitzeitError,
    GraphChanged,
    IdempotencyConflict,
    ReferenceResolutionError,
    ResultError,
    RunControlError,
    RunNotFound,
    RunTimeout,
    StorageFailure,
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
    "GleitzeitError",
    "GraphChanged",
    "IdempotencyConflict",
    "ReferenceResolutionError",
    "ResultError",
    "Run",
    "RunControlError",
    "RunNotFound",
    "RunState",
    "RunTimeout",
    "Settings",
    "StorageFailure",
    "TaskHandle",
    "TaskState",
    "Workflow",
    "WorkflowFailed",
    "WorkflowValidationError",
    "task",
]
