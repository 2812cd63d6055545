"""The order of compensations (pure logic): reverse dependency order, blocking, cascades."""

from __future__ import annotations

from dagworker.compensation import CompDecision, CompState, advance, start
from dagworker.graph import Graph

C = CompState


def graph(**deps: list[str]) -> Graph:
    return Graph.from_edges(deps)


def step(g: Graph, d: CompDecision, outcomes: dict[str, bool], needs: set[str]) -> CompDecision:
    """Apply ``advance`` on top of the states so far (what the store would hold)."""
    nxt = advance(g, dict(d.states), dict(d.waits), outcomes, needs.__contains__)
    merged = CompDecision(
        {**d.states, **nxt.states}, {**d.waits, **nxt.waits}, nxt.claimed, d.finished + nxt.finished
    )
    return merged


def test_chain_starts_at_the_sink_and_walks_back() -> None:
    g = graph(a=[], b=["a"], c=["b"])
    d = start(g, {"a", "b", "c"}.__contains__)
    assert d.claimed == ["c"] and d.states["a"] is C.WAITING
    d = step(g, d, {"c": True}, {"a", "b", "c"})
    assert d.claimed == ["b"]
    d = step(g, d, {"b": True}, {"a", "b", "c"})
    assert d.claimed == ["a"]
    d = step(g, d, {"a": True}, {"a", "b", "c"})
    assert d.claimed == [] and d.is_complete(0, 3)


def test_diamond_branches_are_claimed_together_and_the_root_after_both() -> None:
    g = graph(a=[], b=["a"], c=["a"], d=["b", "c"])
    needs = {"a", "b", "c"}  # d (the failed node) has nothing to undo
    d = start(g, needs.__contains__)
    assert sorted(d.claimed) == ["b", "c"] and d.states["d"] is C.DONE
    d = step(g, d, {"b": True}, needs)
    assert d.claimed == []  # a still waits for c
    d = step(g, d, {"c": True}, needs)
    assert d.claimed == ["a"]


def test_nodes_with_nothing_to_undo_cascade_in_one_step() -> None:
    g = graph(a=[], b=["a"], c=["b"], d=["c"])
    d = start(g, {"a"}.__contains__)
    assert d.claimed == ["a"] and d.finished == 3


def test_failed_compensation_blocks_every_ancestor_but_not_other_branches() -> None:
    g = graph(r=[], b=["r"], x=["r"], y=[], f=["b", "x", "y"])
    needs = {"r", "b", "x", "y"}
    d = start(g, needs.__contains__)
    assert sorted(d.claimed) == ["b", "x", "y"]
    d = step(g, d, {"b": False, "x": True, "y": True}, needs)
    assert d.states["b"] is C.FAILED and d.states["r"] is C.BLOCKED and d.claimed == []
    assert d.states["y"] is C.DONE and d.is_complete(0, 5)


def test_a_repeated_outcome_changes_nothing() -> None:
    g = graph(a=[], b=["a"])
    d = start(g, {"a", "b"}.__contains__)
    d = step(g, d, {"b": True}, {"a", "b"})
    again = advance(g, dict(d.states), dict(d.waits), {"b": True}, {"a", "b"}.__contains__)
    assert again.states == {} and again.claimed == [] and again.finished == 0


def test_a_chain_of_thousands_does_not_recurse() -> None:
    g = Graph.from_edges({f"n{i}": [f"n{i - 1}"] if i else [] for i in range(5000)})
    d = start(g, lambda s: False)
    assert d.is_complete(0, 5000)
