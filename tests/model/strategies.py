"""Hypothesis strategies: random pipelines of ``t_model`` nodes (1-8 nodes, always a DAG)."""

from __future__ import annotations

from typing import Any, get_args

from hypothesis import strategies as st

from dagworker.pipeline import FilterOp

FIELDS = ("v", "w", "b", "m.p", "j", "zz")  # "zz" is never present
SCALARS: tuple[Any, ...] = (0, 1, 2, 5, 7, 1.0, 2.0, True, False, "1", "ab", "abc", None)
NUMBERS = (0, 1, 2.5, 4, 5, 7, 9)
STRINGS = ("a", "b", "ab", "c", "zz", "1")
PATTERNS = ("^a", "b$", "a.c", "^(a|b)+$", "[0-9]", "(a+)+b", "^$")


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    op = draw(st.sampled_from(get_args(FilterOp)))  # every operator of the format
    rule: dict[str, Any] = {"field": field, "op": op}
    if op in ("eq", "neq"):
        rule["value"] = draw(st.sampled_from(SCALARS))
    elif op in ("in", "not_in"):
        rule["value"] = draw(st.lists(st.sampled_from(SCALARS), min_size=1, max_size=3))
    elif op in ("gt", "gte", "lt", "lte"):
        rule["value"] = draw(st.sampled_from(NUMBERS))
    elif op in ("starts_with", "ends_with"):
        rule["value"] = draw(st.sampled_from(STRINGS))
    elif op in ("contains", "not_contains"):
        rule["value"] = draw(st.sampled_from((*STRINGS, 1)))
    elif op == "matches":
        rule["value"] = draw(st.sampled_from(PATTERNS))
    return rule


@st.composite
def edge_filters(draw: st.DrawFn) -> dict[str, Any]:
    edge: dict[str, Any] = {"rules": draw(st.lists(rules(), max_size=2))}
    if draw(st.booleans()):
        edge["select"] = {
            "field": draw(st.sampled_from(("v", "m.p", "w", "b"))),
            "order": draw(st.sampled_from(("asc", "desc"))),
            "limit": draw(st.integers(1, 3)),
        }
    return edge


@st.composite
def pipelines(draw: st.DrawFn) -> dict[str, Any]:
    """A pipeline whose nodes are listed in a topological order (each depends on earlier ones)."""
    size = draw(st.integers(1, 8))
    nodes: list[dict[str, Any]] = []
    for i in range(size):
        slug = f"n{i}"
        earlier = [n["slug"] for n in nodes]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        root = not deps
        k = draw(st.sampled_from((0, 1, 2, 3) if root else (0, 1, 1, 1, 2)))
        fail = (
            draw(st.sampled_from((0,) * 9 + (1,)))
            if root
            else draw(st.sampled_from((0,) * 6 + (1, 2, 2)))
        )
        node: dict[str, Any] = {
            "slug": slug,
            "plugin": "t_model",
            "depends_on": deps,
            "config": {"k": k, "fail": fail},
        }
        if deps:
            node["fan_mode"] = draw(st.sampled_from(("single", "aggregate", "grouped")))
            filtered = draw(st.lists(st.sampled_from(deps), unique=True, max_size=len(deps)))
            if filtered:
                node["edge_filters"] = {d: draw(edge_filters()) for d in filtered}
        if fail:
            node["on_failure"] = draw(st.sampled_from(("fail_run", "continue", "continue")))
        if draw(st.sampled_from((False, False, False, True))):
            node["passthrough"] = True
        nodes.append(node)
    return {"name": "model", "nodes": nodes}
