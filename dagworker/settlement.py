"""What settling a node changes (DESIGN §4.1, §4.5, §7): pure logic, no Redis, no Celery.

Given the states of a run's nodes and the nodes whose tasks are all done, decide their final
states, release their dependants' barriers, cascade skips, claim the nodes that became ready and
say whether the run is finished. The orchestrator turns the decision into one version-checked
commit. Cost is proportional to the nodes settled and their direct dependants, never to the
size of the graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dagworker.graph import Graph
from dagworker.pipeline import OnFailure
from dagworker.states import NodeState, RunState


@dataclass(frozen=True)
class NodeOutcome:
    """Counters of a node whose tasks are all done."""

    tasks: int
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    def final_state(self) -> NodeState:
        if self.failed:
            return NodeState.FAILED
        if self.cancelled:
            return NodeState.CANCELLED
        return NodeState.FILTERED if self.tasks == 0 else NodeState.COMPLETED


@dataclass
class Decision:
    states: dict[str, NodeState] = field(default_factory=dict)  # nodes whose state changes
    waits: dict[str, int] = field(default_factory=dict)  # new barrier counts
    claimed: list[str] = field(default_factory=list)  # to launch, in order
    settled: int = 0  # nodes newly settled
    run_state: RunState | None = None  # set when the run ends
    error: str | None = None
    failed: list[str] = field(default_factory=list)  # every failed node of the run so far
    fail_fast: bool = False  # a fail_run node failed: the run stops (and may roll back)
    ran: int = 0  # nodes that were running and settled now (they leave the running count)


def decide(
    graph: Graph,
    policies: Mapping[str, OnFailure],
    states: Mapping[str, NodeState],
    waits: Mapping[str, int],
    outcomes: Mapping[str, NodeOutcome],
    run_state: RunState,
    settled_before: int,
    failed_before: Sequence[str] = (),
    errors: Mapping[str, str] | None = None,
) -> Decision:
    """Settle ``outcomes`` (slug -> counters). Nodes already settled are ignored (idempotent).

    ``states`` and ``waits`` are only looked up, never iterated, so a caller may pass lazy
    mappings that read the neighbourhood of the settling nodes only.
    """
    decision = Decision()
    changed: dict[str, NodeState] = {}

    def state(slug: str) -> NodeState:
        return changed.get(slug) or states[slug]

    work: list[tuple[str, NodeState]] = [
        (slug, outcome.final_state()) for slug, outcome in outcomes.items()
    ]
    ran = set(outcomes)
    launching = run_state is RunState.RUNNING
    failed = list(failed_before)
    while work:
        slug, final = work.pop(0)
        if state(slug).settled:
            continue
        changed[slug] = decision.states[slug] = final
        decision.settled += 1
        decision.ran += slug in ran
        if final is NodeState.FAILED:
            failed.append(slug)
            if policies[slug] is OnFailure.FAIL_RUN and decision.error is None:
                detail = (errors or {}).get(slug)
                decision.error = f"node {slug!r} failed" + (f": {detail}" if detail else "")
                decision.fail_fast = True
                launching = False
        for succ in graph.successors[slug]:
            remaining = decision.waits.get(succ, waits[succ]) - 1
            decision.waits[succ] = remaining
            if remaining > 0 or state(succ) is not NodeState.PENDING or not launching:
                continue
            preds = graph.predecessors[succ]
            if any(state(p) in (NodeState.FAILED, NodeState.SKIPPED) for p in preds):
                work.append((succ, NodeState.SKIPPED))  # skip cascades (DESIGN §4.5)
            else:
                changed[succ] = decision.states[succ] = NodeState.RUNNING
                decision.claimed.append(succ)
    decision.failed = failed
    # Only a live run ends here: a run rolling back or cancelled still settles the nodes whose
    # tasks were in flight, but its state is decided elsewhere.
    live = run_state in (RunState.RUNNING, RunState.PAUSED)
    if decision.fail_fast and live:
        decision.run_state = RunState.FAILED
    elif settled_before + decision.settled == len(graph.order) and live:
        decision.run_state = RunState.FAILED if failed else RunState.COMPLETED
        if failed and decision.error is None:
            decision.error = "node(s) failed: " + ", ".join(sorted(failed))
    return decision
