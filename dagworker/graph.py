"""Graph algorithms over a pipeline's nodes: order, cycles, reachability."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Graph:
    """Immutable adjacency of a DAG keyed by slug; edges run dependency -> dependant."""

    order: tuple[str, ...]  # declaration order
    predecessors: Mapping[str, tuple[str, ...]]
    successors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_edges(cls, deps: Mapping[str, Sequence[str]]) -> Graph:
        """From ``slug -> depends_on``; unknown targets are dropped (validation reports them)."""
        order = tuple(deps)
        known = set(order)
        preds = {s: tuple(d for d in deps[s] if d in known) for s in order}
        succs: dict[str, list[str]] = {s: [] for s in order}
        for slug in order:
            for dep in preds[slug]:
                succs[dep].append(slug)
        return cls(order, preds, {s: tuple(v) for s, v in succs.items()})

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(s for s in self.order if not self.predecessors[s])

    def find_cycle(self) -> list[str] | None:
        """Return the nodes of one cycle in edge order (``a -> b -> a`` as [a, b]) or None."""
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self.order, white)
        for start in self.order:
            if color[start] != white:
                continue
            path: list[str] = []
            stack: list[tuple[str, int]] = [(start, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    color[node] = grey
                    path.append(node)
                succ = self.successors[node]
                if i < len(succ):
                    stack.append((node, i + 1))
                    nxt = succ[i]
                    if color[nxt] == grey:
                        return path[path.index(nxt) :]
                    if color[nxt] == white:
                        stack.append((nxt, 0))
                else:
                    color[node] = black
                    path.pop()
        return None

    def topological(self) -> list[str]:
        """Kahn's order, ties broken by declaration order. Assumes no cycle."""
        indegree = {s: len(self.predecessors[s]) for s in self.order}
        ready = [s for s in self.order if indegree[s] == 0]
        out: list[str] = []
        while ready:
            node = ready.pop(0)
            out.append(node)
            for nxt in self.successors[node]:
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
        return out

    def descendants(self, slugs: Iterable[str]) -> set[str]:
        """Every node reachable from ``slugs`` (excluding them unless reachable)."""
        seen: set[str] = set()
        stack = [s for start in slugs for s in self.successors.get(start, ())]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.successors[node])
        return seen

    def ancestors(self, slug: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.predecessors.get(slug, ()))
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.predecessors[node])
        return seen
