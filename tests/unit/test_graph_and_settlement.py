"""Graph algorithms and node settlement (pure logic, no services)."""

from __future__ import annotations

import pytest

from dagworker.graph import Graph
from dagworker.pipeline import OnFailure
from dagworker.settlement import NodeOutcome, decide
from dagworker.states import NodeState, RunState

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_roots_successors_and_topological_order() -> None:
    g = Graph.from_edges(DIAMOND)
    assert g.roots == ("a",)
    assert g.successors["a"] == ("b", "c")
    assert g.topological() == ["a", "b", "c", "d"]
    assert g.descendants(["b"]) == {"d"}
    assert g.ancestors("d") == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": ["b"], "b": ["a"]}, {"a", "b"}),
        ({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"]}, {"b", "c", "d"}),
        ({"a": ["a"]}, {"a"}),
    ],
)
def test_find_cycle_names_the_nodes_of_one_cycle(
    edges: dict[str, list[str]], expected: set[str]
) -> None:
    cycle = Graph.from_edges(edges).find_cycle()
    assert cycle is not None and set(cycle) == expected


def test_acyclic_graph_has_no_cycle() -> None:
    assert Graph.from_edges(DIAMOND).find_cycle() is None


def _decide(
    states: dict[str, NodeState],
    waits: dict[str, int],
    outcomes: dict[str, NodeOutcome],
    edges: dict[str, list[str]] = DIAMOND,
    policies: dict[str, OnFailure] | None = None,
    settled_before: int = 0,
    run_state: RunState = RunState.RUNNING,
):
    g = Graph.from_edges(edges)
    pol = {s: OnFailure.FAIL_RUN for s in edges} | (policies or {})
    return decide(g, pol, states, waits, outcomes, run_state, settled_before)


def test_join_is_claimed_only_when_both_branches_settled() -> None:
    # Given b and c running after a completed
    states = {
        "a": NodeState.COMPLETED,
        "b": NodeState.RUNNING,
        "c": NodeState.RUNNING,
        "d": NodeState.PENDING,
    }
    waits = {"a": 0, "b": 0, "c": 0, "d": 2}
    # When b settles
    first = _decide(states, waits, {"b": NodeOutcome(tasks=1, completed=1)}, settled_before=1)
    # Then d's barrier drops to 1 and nothing is claimed
    assert first.claimed == [] and first.waits["d"] == 1
    # When c settles afterwards, d is claimed
    states["b"] = NodeState.COMPLETED
    waits["d"] = 1
    second = _decide(states, waits, {"c": NodeOutcome(tasks=1, completed=1)}, settled_before=2)
    assert second.claimed == ["d"] and second.states["d"] is NodeState.RUNNING


def test_settling_twice_changes_nothing() -> None:
    states = {
        "a": NodeState.COMPLETED,
        "b": NodeState.PENDING,
        "c": NodeState.PENDING,
        "d": NodeState.PENDING,
    }
    decision = _decide(
        states, {"a": 0, "b": 1, "c": 1, "d": 2}, {"a": NodeOutcome(tasks=1, completed=1)}
    )
    assert decision.settled == 0 and decision.claimed == [] and decision.waits == {}


def test_zero_tasks_settles_filtered_and_releases_the_barrier() -> None:
    states = {
        "a": NodeState.COMPLETED,
        "b": NodeState.RUNNING,
        "c": NodeState.COMPLETED,
        "d": NodeState.PENDING,
    }
    decision = _decide(
        states, {"a": 0, "b": 0, "c": 0, "d": 1}, {"b": NodeOutcome(tasks=0)}, settled_before=2
    )
    assert decision.states["b"] is NodeState.FILTERED
    assert decision.claimed == ["d"]


def test_fail_run_policy_fails_the_run_and_claims_nothing() -> None:
    states = {
        "a": NodeState.RUNNING,
        "b": NodeState.PENDING,
        "c": NodeState.PENDING,
        "d": NodeState.PENDING,
    }
    decision = _decide(
        states, {"a": 0, "b": 1, "c": 1, "d": 2}, {"a": NodeOutcome(tasks=1, failed=1)}
    )
    assert decision.run_state is RunState.FAILED
    assert decision.claimed == []
    assert decision.error is not None and "'a'" in decision.error


def test_continue_policy_skips_descendants_and_finishes_failed() -> None:
    edges = {"a": [], "b": ["a"], "c": [], "d": ["b"]}
    states = {
        "a": NodeState.RUNNING,
        "b": NodeState.PENDING,
        "c": NodeState.COMPLETED,
        "d": NodeState.PENDING,
    }
    decision = _decide(
        states,
        {"a": 0, "b": 1, "c": 0, "d": 1},
        {"a": NodeOutcome(tasks=1, failed=1)},
        edges=edges,
        policies={"a": OnFailure.CONTINUE},
        settled_before=1,
    )
    assert decision.states["b"] is NodeState.SKIPPED
    assert decision.states["d"] is NodeState.SKIPPED
    assert decision.run_state is RunState.FAILED


def test_last_node_completes_the_run() -> None:
    states = {
        "a": NodeState.COMPLETED,
        "b": NodeState.COMPLETED,
        "c": NodeState.COMPLETED,
        "d": NodeState.RUNNING,
    }
    decision = _decide(
        states,
        {"a": 0, "b": 0, "c": 0, "d": 0},
        {"d": NodeOutcome(tasks=3, completed=3)},
        settled_before=3,
    )
    assert decision.run_state is RunState.COMPLETED and decision.error is None


def test_paused_run_settles_but_claims_nothing() -> None:
    edges = {"a": [], "b": ["a"]}
    decision = _decide(
        {"a": NodeState.RUNNING, "b": NodeState.PENDING},
        {"a": 0, "b": 1},
        {"a": NodeOutcome(tasks=1, completed=1)},
        edges=edges,
        run_state=RunState.PAUSED,
    )
    assert decision.states == {"a": NodeState.COMPLETED}
    assert decision.waits == {"b": 0} and decision.claimed == []
