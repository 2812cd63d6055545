"""The order of compensations (DESIGN §7): pure logic, no Redis, no Celery.

A rollback walks the graph backwards with the same barrier idea as a forward run: a node's
compensations start only once every direct dependant has finished its own (so, transitively,
every descendant). Nodes with nothing to undo finish at once and release their dependencies in
the same step; independent branches proceed in parallel. When a node's compensation fails, its
ancestors are *left alone* (blocked): undoing them under a dependant that could not be undone
would leave the dependant's effects pointing at nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from dagworker.graph import Graph


class CompState(str, Enum):
    """Where a node is in a rollback (stored as ``<slug>:rb`` in the run's node hash)."""

    WAITING = "waiting"  # some dependant has not finished compensating
    RUNNING = "running"  # its compensation tasks are launched
    DONE = "done"  # compensated, or nothing to undo
    FAILED = "failed"  # a compensation task exhausted its attempts
    BLOCKED = "blocked"  # left alone: a descendant's compensation failed

    @property
    def finished(self) -> bool:
        return self in (CompState.DONE, CompState.FAILED, CompState.BLOCKED)


@dataclass
class CompDecision:
    states: dict[str, CompState] = field(default_factory=dict)  # changes only
    waits: dict[str, int] = field(default_factory=dict)  # dependants still compensating
    claimed: list[str] = field(default_factory=list)  # nodes whose compensations to launch
    finished: int = 0  # nodes newly finished

    def is_complete(self, finished_before: int, total: int) -> bool:
        return finished_before + self.finished == total


def start(graph: Graph, needs: Callable[[str], bool]) -> CompDecision:
    """The first step of a rollback: every node waits on its dependants; sinks are ready."""
    decision = CompDecision()
    decision.states = dict.fromkeys(graph.order, CompState.WAITING)
    decision.waits = {s: len(graph.successors[s]) for s in graph.order}
    walk = _Walk(graph, decision, {}, {}, needs)
    walk.release([s for s in graph.order if not graph.successors[s]])
    return decision


def advance(
    graph: Graph,
    states: Mapping[str, CompState],
    waits: Mapping[str, int],
    outcomes: Mapping[str, bool],
    needs: Callable[[str], bool],
) -> CompDecision:
    """Record nodes whose compensations all finished (``slug -> succeeded``) and cascade.

    ``states`` and ``waits`` are only looked up, so callers may pass lazy mappings; a node that
    already finished is ignored, which makes a repeated outcome a no-op.
    """
    decision = CompDecision()
    walk = _Walk(graph, decision, states, waits, needs)
    for slug, ok in outcomes.items():
        if walk.state(slug) is CompState.RUNNING:
            walk.finish(slug, CompState.DONE if ok else CompState.FAILED)
    return decision


@dataclass
class _Walk:
    """One cascade over the reversed graph, iterative (a chain of thousands must not recurse)."""

    graph: Graph
    decision: CompDecision
    states: Mapping[str, CompState]
    waits: Mapping[str, int]
    needs: Callable[[str], bool]

    def state(self, slug: str) -> CompState:
        return self.decision.states.get(slug) or self.states[slug]

    def finish(self, slug: str, final: CompState) -> None:
        self._run([(slug, final)])

    def release(self, ready: list[str]) -> None:
        self._run([(slug, None) for slug in ready])

    def _run(self, work: list[tuple[str, CompState | None]]) -> None:
        """``(slug, final)`` finishes a node; ``(slug, None)`` decides a node that is ready."""
        d = self.decision
        while work:
            slug, final = work.pop()
            if final is None:
                succs = self.graph.successors[slug]
                if any(self.state(s) in (CompState.FAILED, CompState.BLOCKED) for s in succs):
                    final = CompState.BLOCKED
                elif self.needs(slug):
                    d.states[slug] = CompState.RUNNING
                    d.claimed.append(slug)
                    continue
                else:
                    final = CompState.DONE
            d.states[slug] = final
            d.finished += 1
            for pred in self.graph.predecessors[slug]:
                remaining = d.waits[pred] if pred in d.waits else self.waits[pred]
                d.waits[pred] = remaining - 1
                if remaining == 1 and self.state(pred) is CompState.WAITING:
                    work.append((pred, None))
