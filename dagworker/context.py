"""TaskContext: what a plugin (and its rollback) knows about the task it runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskContext:
    """The first argument of every plugin call (DESIGN §5)."""

    run_id: str
    pipeline: str
    node: str
    task_index: int
    attempt: int
    origin: str | None = None
    artifact: dict[str, Any] | None = None  # the input, in fan mode single
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # every input, in order
    inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per dependency
    config: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)  # the run input
    outputs: list[dict[str, Any]] = field(default_factory=list)  # in rollback: what it produced
    error: str | None = None  # in rollback: the run's error
    repeat_index: int = 0  # with ``repeat: N`` on the node: which of the N tasks of an input
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("dagworker.plugin"))

    @property
    def task_id(self) -> str:
        return f"{self.run_id}:{self.node}:{self.task_index}:{self.attempt}"
