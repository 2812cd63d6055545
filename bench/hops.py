"""Hop latency of a dagworker run: from a node's dependencies finishing to its first task
starting (the orchestration delay a user waits through at every edge of the graph).

Read from the task hashes after the run (``started_at`` is written by begin_task.lua when a
worker picks the task up, ``finished_at`` by finish_task.lua), outside the measured window.
"""

from __future__ import annotations

from typing import Any

import redis

from bench.shapes import Shape
from dagworker.keys import Keys


def _span(values: list[Any]) -> tuple[float, float]:
    starts = [float(s) for s, _ in values if s]
    ends = [float(f) for _, f in values if f]
    return min(starts), max(ends)


def dag_hops(r: redis.Redis, keys: Keys, run_id: str, shape: Shape) -> list[float]:
    """One hop per non-root node: its first task's start minus its dependencies' last end."""
    nodes = shape.pipeline["nodes"]
    pipe = r.pipeline(transaction=False)
    for node in nodes:
        pipe.hget(keys.node(run_id, node["slug"]), "tasks")
    counts = [int(c or 0) for c in pipe.execute()]
    pipe = r.pipeline(transaction=False)
    for node, count in zip(nodes, counts, strict=True):
        for index in range(count):
            pipe.hmget(keys.task(run_id, node["slug"], index), "started_at", "finished_at")
    raw = pipe.execute()
    spans: dict[str, tuple[float, float]] = {}
    at = 0
    for node, count in zip(nodes, counts, strict=True):
        spans[node["slug"]] = _span(raw[at : at + count])
        at += count
    return [
        spans[n["slug"]][0] - max(spans[d][1] for d in n["depends_on"])
        for n in nodes
        if n.get("depends_on")
    ]
