"""Planning tasks from inputs: fan modes, origins, filters before fan-out (no services)."""

from __future__ import annotations

from typing import Any

from dagworker.artifact import Artifact
from dagworker.pipeline import Node
from dagworker.routing import iter_plans, plan_tasks


def make(node: str, origins: list[str | None], **fields: Any) -> list[Artifact]:
    return [
        Artifact(f"{node}:{i}:0", node, origin, {"i": i, **fields})
        for i, origin in enumerate(origins)
    ]


def test_single_one_task_per_artifact_in_dependency_then_emission_order() -> None:
    node = Node(slug="n", plugin="p", depends_on=["b", "a"])
    a = make("a", ["o1", "o2"])
    b = make("b", ["o3"])
    plans = plan_tasks(node, {"a": a, "b": b})
    assert [p.artifact.id for p in plans if p.artifact] == ["b:0:0", "a:0:0", "a:1:0"]
    assert [p.origin for p in plans] == ["o3", "o1", "o2"]
    assert [p.index for p in plans] == [0, 1, 2]
    assert plans[1].inputs == {"b": [], "a": [a[0]]}


def test_aggregate_one_task_with_everything_and_broadcast_origin() -> None:
    node = Node(slug="n", plugin="p", depends_on=["a", "b"], fan_mode="aggregate")
    a, b = make("a", ["x", "y"]), make("b", ["z"])
    (plan,) = plan_tasks(node, {"a": a, "b": b})
    assert plan.origin is None and plan.inputs == {"a": a, "b": b}
    assert plan.artifacts == [*a, *b] and plan.artifact is None


def test_scatter_gather_groups_by_origin_in_first_appearance_order() -> None:
    origins: list[str | None] = [f"src:0:{k}" for k in range(10)]
    left = make("left", origins, tag="L")
    right = make("right", list(reversed(origins)), tag="R")
    node = Node(slug="merge", plugin="p", depends_on=["left", "right"], fan_mode="grouped")
    plans = plan_tasks(node, {"left": left, "right": right})
    assert [p.origin for p in plans] == origins
    for plan in plans:
        assert [a.origin for a in plan.inputs["left"]] == [plan.origin]
        assert [a.origin for a in plan.inputs["right"]] == [plan.origin]


def test_grouped_gives_broadcasts_to_every_group() -> None:
    node = Node(slug="m", plugin="p", depends_on=["each", "summary"], fan_mode="grouped")
    each = make("each", ["o1", "o2"])
    summary = make("summary", [None])
    plans = plan_tasks(node, {"each": each, "summary": summary})
    assert len(plans) == 2
    assert all(p.inputs["summary"] == summary for p in plans)


def test_grouped_with_only_broadcasts_is_one_task() -> None:
    node = Node(slug="m", plugin="p", depends_on=["a"], fan_mode="grouped")
    a = make("a", [None, None])
    (plan,) = plan_tasks(node, {"a": a})
    assert plan.origin is None and plan.inputs == {"a": a}


def test_filters_apply_before_the_fan_mode() -> None:
    node = Node.model_validate(
        {
            "slug": "n",
            "plugin": "p",
            "depends_on": ["a"],
            "edge_filters": {"a": {"rules": [{"field": "i", "op": "gte", "value": 2}]}},
        }
    )
    plans = plan_tasks(node, {"a": make("a", ["o"] * 4)})
    assert [p.artifact.fields["i"] for p in plans if p.artifact] == [2, 3]


def test_no_inputs_means_no_tasks_in_every_mode() -> None:
    for mode in ("single", "aggregate", "grouped"):
        node = Node(slug="n", plugin="p", depends_on=["a"], fan_mode=mode)
        assert plan_tasks(node, {"a": []}) == []


def test_100k_single_plans_are_streamed() -> None:
    node = Node(slug="n", plugin="p", depends_on=["a"])
    many = [Artifact(f"a:0:{k}", "a", f"a:0:{k}", {"k": k}) for k in range(100_000)]
    count, first, last = 0, None, None
    for plan in iter_plans(node, {"a": many}):
        first = first or plan
        last = plan
        count += 1
    assert count == 100_000
    assert first is not None and first.origin == "a:0:0"
    assert last is not None and last.index == 99_999 and last.origin == "a:0:99999"


def test_repeat_plans_each_task_n_times_with_the_same_inputs_and_origin() -> None:
    node = Node(slug="n", plugin="p", depends_on=["a"], repeat=3)
    a = make("a", ["o1", "o2"])
    plans = plan_tasks(node, {"a": a})
    assert [(p.index, p.repeat_index, p.origin) for p in plans] == [
        (0, 0, "o1"),
        (1, 1, "o1"),
        (2, 2, "o1"),
        (3, 0, "o2"),
        (4, 1, "o2"),
        (5, 2, "o2"),
    ]
    assert all(p.inputs == {"a": [a[p.index // 3]]} for p in plans)
