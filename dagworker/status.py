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


class NodeStatus(_Tolerant):
    state: str
    tasks: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    compensated: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


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

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.created_at

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def read_status(store: Store, run_id: str, with_nodes: bool = True) -> RunStatus:
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
                error=c.get("error") or None,
                started_at=_float(c.get("started_at")),
                finished_at=_float(c.get("finished_at")),
            )
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
    )
