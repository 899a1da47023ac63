"""gleitzeit: durable task graphs for Celery."""

from gleitzeit.client import Client, Run
from gleitzeit.errors import (
    AmbiguousRunId,
    ConfigurationError,
    GleitzeitError,
    GraphChanged,
    IdempotencyConflict,
    LoadError,
    ReferenceResolutionError,
    ResultError,
    RunControlError,
    RunNotFound,
    RunTimeout,
    StorageFailure,
    StoreNotReady,
    WorkflowFailed,
    WorkflowValidationError,
)
from gleitzeit.policy import Backoff
from gleitzeit.resolver import DependencyResolver
from gleitzeit.settings import Settings
from gleitzeit.states import RunState, TaskState
from gleitzeit.workflow import TaskHandle, Workflow, task

__all__ = [
    "AmbiguousRunId",
    "Backoff",
    "Client",
    "ConfigurationError",
    "DependencyResolver",
    "GleitzeitError",
    "GraphChanged",
    "IdempotencyConflict",
    "LoadError",
    "ReferenceResolutionError",
    "ResultError",
    "Run",
    "RunControlError",
    "RunNotFound",
    "RunState",
    "RunTimeout",
    "Settings",
    "StorageFailure",
    "StoreNotReady",
    "TaskHandle",
    "TaskState",
    "Workflow",
    "WorkflowFailed",
    "WorkflowValidationError",
    "task",
]
