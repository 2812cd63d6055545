"""Planning a node's tasks from its dependencies' artifacts (DESIGN §4.2-4.3).

Pure: no Redis, no Celery. The engine passes each dependency's artifacts in emission order
(passthrough look-through already resolved) and persists the plans it gets back.

Root nodes are not planned here: a root gets one task with the run input, and the engine makes
each of its artifacts its own origin. Downstream, a ``single`` or ``grouped`` task's artifacts
inherit the task's origin and an ``aggregate`` task's are broadcast (origin None).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dagworker.artifact import Artifact
from dagworker.filters import apply_edge_filter
from dagworker.pipeline import FanMode, Node


@dataclass(frozen=True)
class TaskPlan:
    index: int
    origin: str | None
    inputs: dict[str, list[Artifact]]
    repeat_index: int = 0

    @property
    def artifacts(self) -> list[Artifact]:
        return [a for arts in self.inputs.values() for a in arts]

    @property
    def artifact(self) -> Artifact | None:
        arts = self.artifacts
        return arts[0] if len(arts) == 1 else None


def filtered_inputs(
    node: Node, inputs: Mapping[str, Sequence[Artifact]]
) -> dict[str, list[Artifact]]:
    """Each dependency's artifacts after that edge's rules and selection."""
    return {
        dep: apply_edge_filter(node.edge_filters.get(dep), inputs.get(dep, ()))
        for dep in node.depends_on
    }


def iter_plans(node: Node, inputs: Mapping[str, Sequence[Artifact]]) -> Iterator[TaskPlan]:
    """The node's tasks in launch order; none when every input is empty (the node is filtered)."""
    kept = filtered_inputs(node, inputs)
    if node.fan_mode is FanMode.SINGLE:
        yield from _single(node, kept)
    elif node.fan_mode is FanMode.AGGREGATE:
        if any(kept.values()):
            yield TaskPlan(0, None, kept)
    else:
        yield from _grouped(node, kept)


def plan_tasks(node: Node, inputs: Mapping[str, Sequence[Artifact]]) -> list[TaskPlan]:
    return list(repeated(node, iter_plans(node, inputs)))


def repeated(node: Node, plans: Iterable[TaskPlan]) -> Iterator[TaskPlan]:
    """``repeat: N``: each planned task N times, with the same inputs and origin, renumbered
    in order (the repeats of one input are adjacent)."""
    if node.repeat == 1:
        yield from plans
        return
    index = 0
    for plan in plans:
        for r in range(node.repeat):
            yield TaskPlan(index, plan.origin, plan.inputs, r)
            index += 1


def _single(node: Node, kept: dict[str, list[Artifact]]) -> Iterator[TaskPlan]:
    index = 0
    for dep in node.depends_on:
        for artifact in kept[dep]:
            inputs = {d: ([artifact] if d == dep else []) for d in node.depends_on}
            yield TaskPlan(index, artifact.origin, inputs)
            index += 1


def _grouped(node: Node, kept: dict[str, list[Artifact]]) -> Iterator[TaskPlan]:
    """One task per origin, with that origin's artifacts per dependency plus the broadcasts."""
    groups: dict[str, dict[str, list[Artifact]]] = {}  # insertion order = first appearance
    broadcast: dict[str, list[Artifact]] = {dep: [] for dep in node.depends_on}
    for dep in node.depends_on:
        for artifact in kept[dep]:
            if artifact.origin is None:
                broadcast[dep].append(artifact)
            else:
                group = groups.setdefault(artifact.origin, {d: [] for d in node.depends_on})
                group[dep].append(artifact)
    if not groups:
        if any(broadcast.values()):
            yield TaskPlan(0, None, broadcast)
        return
    for index, (origin, group) in enumerate(groups.items()):
        yield TaskPlan(index, origin, {d: group[d] + broadcast[d] for d in node.depends_on})
