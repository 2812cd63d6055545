"""The input artifacts a launch plans its tasks from (DESIGN §4.2, §4.5), read in few round trips.

A node's inputs are, per dependency, the artifacts of that dependency when it completed, or,
when it is a filtered passthrough node, those of its own dependencies (transitively). Reads are
batched across dependencies: the node states in one HMGET (the states the orchestrator has just
read and decided are not asked for again), every counts hash in one pipeline, the outputs lists
in pipelined chunks. One ``Inputs`` is shared by the nodes an ``advance`` claims together: a
layer of nodes over the same dependencies reads them once.

Artifacts of a settled node never change, which is what makes sharing them safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dagworker.artifact import Artifact
from dagworker.pipeline import Node
from dagworker.states import NodeState
from dagworker.store import Store


class Inputs:
    def __init__(
        self,
        store: Store,
        run_id: str,
        nodes: Mapping[str, Node],
        known_states: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.nodes = nodes
        self.states: dict[str, str | None] = dict(known_states or {})
        self.artifacts: dict[str, list[Artifact]] = {}
        #: ``read_outputs.lua`` replies read ahead (with the commit that claimed the nodes).
        self.replies: dict[str, Any] = {}

    def of(
        self, node: Node, heartbeat: Callable[[], None] | None = None, every: int = 5_000
    ) -> dict[str, list[Artifact]]:
        """Per dependency of ``node``, in its ``depends_on`` order, the artifacts it gets.

        ``heartbeat`` is called every ``every`` artifacts read from Redis (a long read must
        not look like a stalled launch to the reconciler).
        """
        sources = self._sources(node.depends_on)
        needed = [
            s
            for s in dict.fromkeys(s for dep in node.depends_on for s in sources[dep])
            if s not in self.artifacts
        ]
        if needed:
            replies = {s: self.replies.pop(s) for s in needed if s in self.replies}
            self.artifacts.update(
                self.store.read_artifacts(self.run_id, needed, heartbeat, every, replies)
            )
        return {dep: [a for s in sources[dep] for a in self.artifacts[s]] for dep in sources}

    def keep(self, slugs: Iterable[str]) -> None:
        """Forget the artifacts of nodes not in ``slugs`` (what the next launches depend on)."""
        wanted = set(slugs)
        for slug in [s for s in self.artifacts if s not in wanted]:
            del self.artifacts[slug]
        for slug in [s for s in self.replies if s not in wanted]:
            del self.replies[slug]

    def _sources(self, deps: Iterable[str]) -> dict[str, list[str]]:
        """Per dependency, the completed nodes whose artifacts it stands for (§4.5)."""
        deps = list(deps)
        unknown = [d for d in dict.fromkeys(deps) if d not in self.states]
        if unknown:
            values = self.store.r.hmget(self.store.keys.nodes(self.run_id), unknown)
            self.states.update(zip(unknown, values, strict=True))
        out: dict[str, list[str]] = {}
        for dep in deps:
            state = self.states.get(dep)
            node = self.nodes[dep]
            if node.passthrough and state == NodeState.FILTERED.value:
                upstream = self._sources(node.depends_on)  # one HMGET per level, at most
                out[dep] = [s for u in node.depends_on for s in upstream[u]]
            elif state == NodeState.COMPLETED.value:
                out[dep] = [dep]
            else:
                out[dep] = []
        return out
