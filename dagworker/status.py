"""Run status as users see it (``dagworker status --json``, ``RunHandle.status()``).

Records read back from Redis tolerate added fields so workers and clients of different
versions can share a run.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from dagworker.store import Store


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Attempt(_Tolerant):
    """One finished attempt of a task or of its compensation (``kind``)."""

    kind: str = "task"
    attempt: int
    state: str
    error: str | None = None
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class TaskHistory(_Tolerant):
    """A task worth showing (it failed or was retried): its attempts, oldest first."""

    task: int
    state: str
    attempts: list[Attempt] = []
    traceback: str | None = None


class NodeStatus(_Tolerant):
    state: str
    tasks: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    compensated: int = 0
    cache_hits: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    compensation: str | None = None  # in a rollback: waiting, running, done, failed, blocked
    history: list[TaskHistory] = []  # failed or retried tasks (with_history), at most 20


class RunStatus(_Tolerant):
    run_id: str
    pipeline: str
    pipeline_version: str | None = None
    status: str
    error: str | None = None
    created_at: float
    finished_at: float | None = None
    input: dict[str, Any] = {}
    tasks_total: int = 0
    tasks_done: int = 0
    nodes: dict[str, NodeStatus] = {}
    replay_of: str | None = None
    parent: str | None = None  # a sub-pipeline's child run: "<run>/<node>/<task>"
    children: list[str] = []  # child runs started by this run's sub-pipeline nodes
    events: list[dict[str, Any]] = []  # status transitions, with times (with_history)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.created_at

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _parent(raw: str | None) -> str | None:
    """``[run, node, task, attempt]`` as ``run/node/task``."""
    return "/".join(str(p) for p in json.loads(raw)[:3]) if raw else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def task_history(store: Store, run_id: str, slug: str, index: int) -> TaskHistory:
    task = store.task(run_id, slug, index)
    return TaskHistory(
        task=index,
        state=task.get("state", "queued"),
        attempts=[Attempt(**a) for a in store.history(run_id, slug, index)],
        traceback=task.get("rb_traceback") or task.get("traceback") or None,
    )


def read_status(
    store: Store, run_id: str, with_nodes: bool = True, with_history: bool = False
) -> RunStatus:
    """A run as users see it; ``with_history`` adds transitions and failed or retried tasks."""
    run = store.run(run_id)
    nodes: dict[str, NodeStatus] = {}
    if with_nodes:
        states = store.nodes(run_id)
        order = json.loads(store.pipeline_json(run_id))["nodes"]
        slugs = [n["slug"] for n in order]
        counters = store.node_counters(run_id, slugs)
        for slug in slugs:
            c = counters[slug]
            nodes[slug] = NodeStatus(
                state=states.get(slug, "pending"),
                tasks=int(c.get("tasks", 0)),
                completed=int(c.get("completed", 0)),
                failed=int(c.get("failed", 0)),
                cancelled=int(c.get("cancelled", 0)),
                compensated=int(c.get("compensated", 0)),
                cache_hits=int(c.get("cache_hits", 0)),
                error=c.get("error") or None,
                started_at=_float(c.get("started_at")),
                finished_at=_float(c.get("finished_at")),
                compensation=states.get(f"{slug}:rb") or None,
            )
            if with_history:
                nodes[slug].history = [
                    task_history(store, run_id, slug, i) for i in store.notable_tasks(run_id, slug)
                ]
    return RunStatus(
        run_id=run_id,
        pipeline=run["pipeline"],
        pipeline_version=run.get("pipeline_version") or None,
        status=run["status"],
        error=run.get("error") or None,
        created_at=float(run["created_at"]),
        finished_at=_float(run.get("finished_at")),
        input=json.loads(run.get("input") or "{}"),
        tasks_total=int(run.get("tasks_total", 0)),
        tasks_done=int(run.get("tasks_done", 0)),
        nodes=nodes,
        replay_of=run.get("replay_of") or None,
        parent="/".join(str(p) for p in json.loads(run["parent"])[:3])
        if run.get("parent")
        else None,
        children=sorted(store.r.smembers(store.keys.children(run_id))) if with_nodes else [],
        events=store.events(run_id) if with_history else [],
    )
