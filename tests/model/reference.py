"""A pure, in-memory reference of DESIGN §4 routing semantics, for the model-based test.

Written from the contract, not from the engine's code: it shares nothing with ``dagworker``
but the data the model plugin emits (``derive``). It runs a pipeline dict whose nodes all use
the ``t_model`` plugin and says, per node, which tasks exist (inputs by content, origins),
what they output and how the node and the run end.

It computes the *keep-going* execution: every node that can run, runs. When a node with
``on_failure: fail_run`` fails, the real run stops launching at that point, which depends on
timing; ``Prediction.strict`` is then False and the test checks the weaker, timing-free
properties (see ``tests/integration/test_model.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.model import derive

_MISSING = object()


@dataclass(frozen=True)
class Art:
    id: str
    origin: str | None
    fields: dict[str, Any]

    def id_key(self) -> tuple[str, int, int]:
        node, task, emit = self.id.rsplit(":", 2)
        return node, int(task), int(emit)


@dataclass
class Task:
    index: int
    origin: str | None
    inputs: dict[str, list[Art]]  # dependency -> artifacts, empty ones included
    state: str = "completed"  # completed | failed
    outputs: list[Art] = field(default_factory=list)


@dataclass
class NodeResult:
    state: str  # completed | failed | filtered | skipped
    tasks: list[Task] = field(default_factory=list)

    @property
    def artifacts(self) -> list[Art]:
        return [a for t in self.tasks for a in t.outputs]


@dataclass
class Prediction:
    run_state: str
    nodes: dict[str, NodeResult]
    strict: bool  # False when a fail_run failure makes the stopping point timing-dependent
    fail_run_failed: set[str]

    @property
    def total_tasks(self) -> int:
        return sum(len(n.tasks) for n in self.nodes.values())


# -- typed JSON values (DESIGN §4.4) ----------------------------------------------------------


def _number(x: Any) -> bool:
    return type(x) in (int, float)


def _equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _path(fields: Mapping[str, Any], dotted: str) -> Any:
    value: Any = fields
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _positive(op: str, value: Any, arg: Any) -> bool:
    if value is _MISSING:
        return False
    if op == "eq":
        return _equal(value, arg)
    if op == "in":
        return isinstance(arg, list) and any(_equal(value, x) for x in arg)
    if op == "contains":
        if isinstance(value, str):
            return isinstance(arg, str) and arg in value
        return isinstance(value, list) and any(_equal(arg, x) for x in value)
    if op in ("starts_with", "ends_with"):
        if not (isinstance(value, str) and isinstance(arg, str)):
            return False
        return value.startswith(arg) if op == "starts_with" else value.endswith(arg)
    if op in ("gt", "gte", "lt", "lte"):
        if not (_number(value) and _number(arg)):
            return False
        return {
            "gt": value > arg,
            "gte": value >= arg,
            "lt": value < arg,
            "lte": value <= arg,
        }[op]
    if op == "exists":
        return True
    if op == "matches":
        return isinstance(value, str) and re.search(arg, value) is not None
    raise AssertionError(f"reference: unknown op {op}")


_NEGATED = {"neq": "eq", "not_in": "in", "not_contains": "contains", "not_exists": "exists"}


def passes(rule: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    op = rule["op"]
    value = _path(fields, rule["field"])
    if op in _NEGATED:
        return not _positive(_NEGATED[op], value, rule.get("value"))
    return _positive(op, value, rule.get("value"))


def apply_filter(edge: Mapping[str, Any] | None, arts: Sequence[Art]) -> list[Art]:
    if not edge:
        return list(arts)
    kept = [a for a in arts if all(passes(r, a.fields) for r in edge.get("rules", []))]
    select = edge.get("select")
    if select:
        desc = select.get("order", "desc") == "desc"

        def key(a: Art) -> tuple[Any, ...]:
            v = _path(a.fields, select["field"])
            if _number(v):
                return (0, -v if desc else v, a.id_key())
            return (1, 0, a.id_key())  # non-numbers last, in id order

        kept = sorted(kept, key=key)[: select["limit"]]
    return kept


# -- execution --------------------------------------------------------------------------------


def _plans(
    fan_mode: str, deps: Sequence[str], kept: Mapping[str, list[Art]]
) -> list[tuple[str | None, dict[str, list[Art]]]]:
    if fan_mode == "single":
        return [
            (a.origin, {d: ([a] if d == dep else []) for d in deps})
            for dep in deps
            for a in kept[dep]
        ]
    if fan_mode == "aggregate":
        return [(None, {d: list(kept[d]) for d in deps})] if any(kept.values()) else []
    groups: dict[str, dict[str, list[Art]]] = {}  # first appearance: dependency, then emission
    shared: dict[str, list[Art]] = {d: [] for d in deps}
    for dep in deps:
        for a in kept[dep]:
            if a.origin is None:
                shared[dep].append(a)
            else:
                groups.setdefault(a.origin, {d: [] for d in deps})[dep].append(a)
    if not groups:
        return [(None, shared)] if any(shared.values()) else []
    return [(o, {d: g[d] + shared[d] for d in deps}) for o, g in groups.items()]


def predict(pipeline: Mapping[str, Any]) -> Prediction:
    """Run ``pipeline`` (nodes listed in a topological order) in memory."""
    specs = {n["slug"]: n for n in pipeline["nodes"]}
    results: dict[str, NodeResult] = {}

    def visible(dep: str) -> list[Art]:
        # §4.5: a filtered passthrough node is looked through, transitively through passthrough
        # nodes only; any other filtered node contributes nothing.
        r = results[dep]
        if r.state == "filtered" and specs[dep].get("passthrough"):
            return [a for up in specs[dep].get("depends_on", []) for a in visible(up)]
        return r.artifacts if r.state == "completed" else []

    for node in pipeline["nodes"]:
        slug = node["slug"]
        deps = list(node.get("depends_on", []))
        config = node.get("config", {})
        if any(results[d].state in ("failed", "skipped") for d in deps):
            results[slug] = NodeResult("skipped")
            continue
        if not deps:
            plans: list[tuple[str | None, dict[str, list[Art]]]] = [(None, {})]
        else:
            filters = node.get("edge_filters", {})
            kept = {d: apply_filter(filters.get(d), visible(d)) for d in deps}
            plans = _plans(node.get("fan_mode", "single"), deps, kept)
        if not plans:
            results[slug] = NodeResult("filtered")
            continue
        result = NodeResult("completed")
        for index, (origin, inputs) in enumerate(plans):
            task = Task(index, origin, inputs)
            flat = [a for d in deps for a in inputs[d]]
            if derive.should_fail(config.get("fail", 0), [a.fields for a in flat]):
                task.state = result.state = "failed"
            else:
                made = derive.outputs(slug, [a.fields["key"] for a in flat], config.get("k", 1))
                for j, fields in enumerate(made):
                    aid = f"{slug}:{index}:{j}"
                    # §4.3: a root's artifacts are their own origin; single and grouped tasks
                    # pass their origin on; an aggregate task's outputs are broadcast.
                    if not deps:
                        out_origin: str | None = aid
                    elif node.get("fan_mode", "single") == "aggregate":
                        out_origin = None
                    else:
                        out_origin = origin
                    task.outputs.append(Art(aid, out_origin, fields))
            result.tasks.append(task)
        results[slug] = result
    failed = {s for s, r in results.items() if r.state == "failed"}
    fail_run = {s for s in failed if specs[s].get("on_failure", "fail_run") == "fail_run"}
    return Prediction(
        "failed" if failed else "completed", results, strict=not fail_run, fail_run_failed=fail_run
    )
