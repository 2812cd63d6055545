"""dagworker: durable DAG pipelines on ordinary Celery workers and Redis.

``celery -A dagworker worker`` finds the Celery app as ``dagworker.app``; it is built lazily so
that importing the package for the plugin API does not configure Celery.
"""

from __future__ import annotations

from typing import Any

from dagworker.client import Client, RunHandle, load_pipeline
from dagworker.context import TaskContext
from dagworker.errors import (
    DagworkerError,
    PipelineError,
    PipelineInvalid,
    PluginError,
    RunError,
    StoreError,
)
from dagworker.hooks import on_run
from dagworker.pipeline import Pipeline
from dagworker.plugin import Plugin, plugin, registry
from dagworker.settings import Settings
from dagworker.states import NodeState, RunState, TaskState
from dagworker.status import RunStatus

__all__ = [
    "Client",
    "DagworkerError",
    "NodeState",
    "Pipeline",
    "PipelineError",
    "PipelineInvalid",
    "Plugin",
    "PluginError",
    "RunError",
    "RunHandle",
    "RunState",
    "RunStatus",
    "Settings",
    "StoreError",
    "TaskContext",
    "TaskState",
    "app",
    "load_pipeline",
    "on_run",
    "plugin",
    "registry",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "app":
        from dagworker.worker import app

        return app
    raise AttributeError(f"module 'dagworker' has no attribute {name!r}")
