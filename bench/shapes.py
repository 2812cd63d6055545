"""The benchmark shapes, each built for both engines from one size description.

dagworker gets a pipeline (dict, validated by ``Client.submit``); canvas gets the signature a
Celery user would write for the same graph. Both run no-op steps that pass a small JSON value,
so what is measured is orchestration. One difference is inherent: dagworker's fan-out is driven
by data (the root emits N artifacts), canvas's is static (the N signatures are in the message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import chain, chord, group
from celery.canvas import Signature

from bench.canvas_app import agg, step


@dataclass(frozen=True)
class Shape:
    """One graph: how many runs of it start at once, and the task count of one run."""

    name: str
    pipeline: dict[str, Any]
    runs: int
    tasks: int


def chain_shape(length: int) -> Shape:
    nodes = [{"slug": "n0", "plugin": "bench_step"}]
    nodes += [
        {"slug": f"n{i}", "plugin": "bench_step", "depends_on": [f"n{i - 1}"]}
        for i in range(1, length)
    ]
    return Shape(f"chain-{length}", {"name": f"chain{length}", "nodes": nodes}, 1, length)


def fanout_shape(width: int, aggregate: bool = True) -> Shape:
    """src emits ``width`` artifacts -> ``each`` (single: one task per artifact) [-> total]."""
    nodes: list[dict[str, Any]] = [
        {"slug": "src", "plugin": "bench_emit", "config": {"n": width}},
        {"slug": "each", "plugin": "bench_step", "depends_on": ["src"]},
    ]
    if aggregate:
        nodes.append(
            {
                "slug": "total",
                "plugin": "bench_agg",
                "depends_on": ["each"],
                "fan_mode": "aggregate",
            }
        )
    name = f"fanout-{width}" + ("-agg" if aggregate else "")
    return Shape(name, {"name": "fanout", "nodes": nodes}, 1, width + 1 + int(aggregate))


def layers_shape(depth: int, width: int) -> Shape:
    """``depth`` layers of ``width`` nodes; each node depends on every node of the layer above."""
    nodes: list[dict[str, Any]] = [
        {"slug": f"l0-{j}", "plugin": "bench_step"} for j in range(width)
    ]
    for k in range(1, depth):
        above = [f"l{k - 1}-{j}" for j in range(width)]
        nodes += [
            {
                "slug": f"l{k}-{j}",
                "plugin": "bench_agg",
                "depends_on": above,
                "fan_mode": "aggregate",
            }
            for j in range(width)
        ]
    return Shape(f"layers-{depth}x{width}", {"name": "layers", "nodes": nodes}, 1, depth * width)


def diamonds_shape(count: int) -> Shape:
    """``count`` concurrent runs of a -> (b, c) -> d."""
    nodes = [
        {"slug": "a", "plugin": "bench_step"},
        {"slug": "b", "plugin": "bench_step", "depends_on": ["a"]},
        {"slug": "c", "plugin": "bench_step", "depends_on": ["a"]},
        {"slug": "d", "plugin": "bench_agg", "depends_on": ["b", "c"], "fan_mode": "aggregate"},
    ]
    return Shape(f"diamonds-{count}", {"name": "diamond", "nodes": nodes}, count, 4)


def canvas_signatures(shape: Shape) -> list[Signature]:
    """The canvas a Celery user writes for ``shape``: one signature per concurrent run."""
    nodes = shape.pipeline["nodes"]
    kind = shape.name.split("-", 1)[0]
    if kind == "chain":
        return [chain(step.s(k=i) for i in range(len(nodes)))]
    if kind == "fanout":
        width = nodes[0]["config"]["n"]
        header = [step.s(k=i) for i in range(width)]
        if len(nodes) == 3:
            return [chain(step.s(), chord(header, agg.s()))]
        return [chain(step.s(), group(header))]
    if kind == "layers":
        depth, width = (int(x) for x in shape.name.split("-", 1)[1].split("x"))
        # A chain of groups: Celery turns each group followed by a group into a chord whose
        # body is the next layer, so every task of layer k gets all results of layer k-1.
        layers = [group(step.s(k=j) for j in range(width))]
        layers += [group(agg.s(k=j) for j in range(width)) for _ in range(1, depth)]
        return [chain(*layers)]
    if kind == "diamonds":
        return [chain(step.s(), chord([step.s(), step.s()], agg.s())) for _ in range(shape.runs)]
    raise ValueError(f"no canvas for shape {shape.name!r}")
