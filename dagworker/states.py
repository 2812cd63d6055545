"""Run, node and task states (DESIGN §7) with terminal sets and transition tables.

Illegal transitions raise. The Lua scripts that change state in Redis enforce the same tables
through the guards they check (``expected`` states); these tables are the reference.
"""

from __future__ import annotations

from enum import Enum

from dagworker.errors import IllegalTransition


class RunState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"

    @property
    def terminal(self) -> bool:
        return self in RUN_TERMINAL


class NodeState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    FILTERED = "filtered"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"

    @property
    def settled(self) -> bool:
        """Settled nodes release their dependants' barriers (DESIGN §4.1)."""
        return self in NODE_SETTLED


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"

    @property
    def terminal(self) -> bool:
        return self in TASK_TERMINAL


RUN_TERMINAL = frozenset(
    {
        RunState.COMPLETED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.ROLLED_BACK,
        RunState.ROLLBACK_FAILED,
    }
)
NODE_SETTLED = frozenset(
    {
        NodeState.COMPLETED,
        NodeState.FAILED,
        NodeState.FILTERED,
        NodeState.SKIPPED,
        NodeState.CANCELLED,
        NodeState.ROLLED_BACK,
    }
)
TASK_TERMINAL = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.COMPENSATED}
)

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.RUNNING: frozenset(
        {
            RunState.PAUSED,
            RunState.COMPLETED,
            RunState.FAILED,
            RunState.CANCELLED,
            RunState.ROLLING_BACK,
        }
    ),
    # A paused run still records what finishes, so it can complete or fail while paused.
    RunState.PAUSED: frozenset(
        {
            RunState.RUNNING,
            RunState.CANCELLED,
            RunState.FAILED,
            RunState.COMPLETED,
            RunState.ROLLING_BACK,
        }
    ),
    RunState.COMPLETED: frozenset({RunState.ROLLING_BACK}),
    RunState.FAILED: frozenset({RunState.ROLLING_BACK, RunState.RUNNING}),
    RunState.CANCELLED: frozenset({RunState.RUNNING, RunState.ROLLING_BACK}),
    RunState.ROLLING_BACK: frozenset({RunState.ROLLED_BACK, RunState.ROLLBACK_FAILED}),
    RunState.ROLLED_BACK: frozenset(),
    RunState.ROLLBACK_FAILED: frozenset({RunState.ROLLING_BACK}),
}

NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.PENDING: frozenset(
        {NodeState.RUNNING, NodeState.FILTERED, NodeState.SKIPPED, NodeState.CANCELLED}
    ),
    NodeState.RUNNING: frozenset({NodeState.COMPLETED, NodeState.FAILED, NodeState.CANCELLED}),
    NodeState.COMPLETED: frozenset({NodeState.ROLLED_BACK}),
    # a retried run sends failed, cancelled and skipped nodes round again (§7 retry)
    NodeState.FAILED: frozenset({NodeState.ROLLED_BACK, NodeState.RUNNING, NodeState.PENDING}),
    NodeState.FILTERED: frozenset(),
    NodeState.SKIPPED: frozenset({NodeState.PENDING}),
    NodeState.CANCELLED: frozenset({NodeState.ROLLED_BACK, NodeState.RUNNING, NodeState.PENDING}),
    NodeState.ROLLED_BACK: frozenset(),
}

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELLED}),
    TaskState.RUNNING: frozenset(
        {TaskState.COMPLETED, TaskState.FAILED, TaskState.RETRYING, TaskState.CANCELLED}
    ),
    TaskState.RETRYING: frozenset({TaskState.RUNNING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.COMPLETED: frozenset({TaskState.COMPENSATED}),
    TaskState.FAILED: frozenset({TaskState.COMPENSATED}),
    TaskState.CANCELLED: frozenset(),
    TaskState.COMPENSATED: frozenset(),
}


def check_run_transition(current: RunState, new: RunState) -> None:
    """Raise IllegalTransition unless ``current -> new`` is in the run transition table."""
    if new not in RUN_TRANSITIONS[current]:
        raise IllegalTransition(f"run cannot go from {current.value!r} to {new.value!r}")


def check_node_transition(current: NodeState, new: NodeState) -> None:
    if new not in NODE_TRANSITIONS[current]:
        raise IllegalTransition(f"node cannot go from {current.value!r} to {new.value!r}")


def check_task_transition(current: TaskState, new: TaskState) -> None:
    if new not in TASK_TRANSITIONS[current]:
        raise IllegalTransition(f"task cannot go from {current.value!r} to {new.value!r}")
