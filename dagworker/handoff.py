"""Handoff: the completion of a node's only task launches the node's successors itself.

In a chain, a diamond's head or a layer of single-task nodes, most completions settle a node
whose successors' inputs are already known to the worker finishing it: they are the outputs it
is about to record. The usual path (``finish_task``, then the orchestrator's lock, reads,
decision, commit, launch and publish) costs seven round trips for that. Here the worker plans
those successors the way a launch would (``routing.iter_plans``, ``Orchestrator.spec``) and
hands the plan to ``finish_task.lua``, which applies it in the same atomic step as the
completion only when the orchestrator would have decided exactly that (the script's header
lists the conditions); otherwise the node goes to the settle set as before and nothing planned
here is written.

What qualifies, decided here from the pipeline and one read of the run:

- the task is its node's only one (``solo`` in its spec: the launcher marks it);
- every successor either becomes ready with this completion (it depends on this node alone, or
  its other dependencies had all completed when the plan was made: a join whose last
  dependency this is), or waits for another node too (its barrier only moves down);
- each successor that becomes ready is a plugin node (not a sub-pipeline) whose plan has
  between one and ``launch_batch`` tasks, and its messages can be written by the script: the
  broker is the run store's Redis (``CeleryPublisher.envelopes``);
- a join's other dependencies are at most ``MAX_JOIN_DEPENDENCIES`` nodes with at most
  ``MAX_JOIN_INPUTS`` artifacts together (an even share each): they are read here, on the
  completion path (committed artifacts never change, so the read needs no lock). The script
  claims a join only if its barrier still waits for this node alone, which holds exactly when
  those dependencies have settled; when two of them finish at the same time and both saw the
  other running, the second completion finds the barrier at one and falls back to the
  orchestrator, as before.

The messages are pushed by the script that creates their tasks, so there is no outbox entry
and no window between persisting and publishing for the reconciler to repair.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from dagworker.artifact import Artifact
from dagworker.errors import DagworkerError
from dagworker.hooks import listened
from dagworker.inputs import Inputs
from dagworker.pipeline import Node
from dagworker.routing import TaskPlan, iter_plans, repeated
from dagworker.states import NodeState, RunState
from dagworker.store import decode_artifact, now

if TYPE_CHECKING:
    from dagworker.orchestrator import Compiled, Orchestrator

#: The spec flag of a task that is its node's only one.
SOLO = "solo"
#: A node with more successors than this is settled by the orchestrator (the script's reads
#: and writes of their states stay well inside what one Lua call may unpack).
MAX_SUCCESSORS = 1_000
#: A join is launched by the orchestrator when its other dependencies have more artifacts than
#: this together (the completion path reads at most this many: an even share per dependency),
#: or when they are more than MAX_JOIN_DEPENDENCIES nodes.
MAX_JOIN_INPUTS = 1_000
MAX_JOIN_DEPENDENCIES = 64


@dataclass(frozen=True)
class Handoff:
    """What ``finish_task.lua`` applies: ``plan`` names ``keys`` by position (from KEYS[11]);
    ``at`` is the completion's time (the run's end event, when it ends there, carries it)."""

    plan: str
    keys: list[str]
    at: float


def launch_limit(orch: Orchestrator) -> int:
    """The most tasks a script may create and send in one step: one launch batch."""
    settings = orch.store.settings
    return min(settings.launch_batch, settings.max_tasks_per_node)


def direct_launch(
    orch: Orchestrator, c: Compiled, node: Node, plans: Iterable[TaskPlan]
) -> tuple[list[dict[str, Any]], tuple[str, list[str]]] | None:
    """A node's task specs and messages (queue key, envelopes) for a script on the run store
    to create and send in one step, or None when the usual launch must do it: the node is a
    sub-pipeline or its plugin is unknown here, its plan is empty (filtered), needs several
    batches or is over the limit, or the broker is not the run store's Redis."""
    if node.pipeline is not None or node.plugin not in orch.registry:
        return None
    limit = launch_limit(orch)
    planned = list(islice(plans, limit + 1))  # (a repeat of 10,000 is not planned in full)
    if not planned or len(planned) > limit:
        return None
    specs = [orch.spec(c, node, p, solo=len(planned) == 1) for p in planned]
    plugin = orch.registry.get(node.plugin)
    sent = orch.publisher.envelopes(c.run_id, node, plugin, [(i, 1) for i in range(len(specs))])
    return None if sent is None else (specs, sent)


def eligible(orch: Orchestrator, spec: dict[str, Any]) -> bool:
    """Whether a completed task with this spec may hand off (before looking at the graph)."""
    return bool(spec.get(SOLO)) and orch.store.settings.handoff


def plan(
    orch: Orchestrator,
    c: Compiled,
    slug: str,
    index: int,
    spec: dict[str, Any],
    encoded: Sequence[str],
) -> Handoff | None:
    """The handoff for a completed task with these (inline) outputs, or None."""
    if not eligible(orch, spec):
        return None
    k = orch.store.keys
    keys: list[str] = []

    def key(name: str) -> int:
        keys.append(name)
        return 10 + len(keys)

    outputs = [decode_artifact(slug, index, n, raw) for n, raw in enumerate(encoded)]
    claim: list[list[Any]] = []
    wait: list[str] = []
    pushes: dict[str, list[str]] = {}
    if len(c.graph.successors[slug]) > MAX_SUCCESSORS:
        return None
    ready, inputs = _joins(orch, c, slug, outputs)
    for succ in c.graph.successors[slug]:
        alone = c.graph.predecessors[succ] == (slug,)
        if not alone and succ not in ready:
            wait.append(succ)
            continue
        node = c.nodes[succ]
        try:
            if alone:
                given = {slug: outputs}
            elif inputs is not None:
                given = inputs.of(node)
            else:
                return None  # a join with too many inputs to read here
            planned = direct_launch(orch, c, node, repeated(node, iter_plans(node, given)))
        except DagworkerError:
            return None  # the orchestrator's launch reports it
        if planned is None:
            return None
        specs, sent = planned
        pushes.setdefault(sent[0], []).extend(sent[1])
        tasks = [
            [key(k.task(c.run_id, succ, i)), json.dumps(s, separators=(",", ":"))]
            for i, s in enumerate(specs)
        ]
        claim.append([succ, key(k.node(c.run_id, succ)), tasks])
    if sum(len(envelopes) for envelopes in pushes.values()) > launch_limit(orch):
        return None  # more than one launch batch: the orchestrator launches in batches
    push = [[key(queue), envelopes] for queue, envelopes in pushes.items()]
    at = now()
    body: dict[str, Any] = {"epoch": c.epoch, "claim": claim, "wait": wait, "push": push}
    if not c.graph.successors[slug]:
        # Only a node without successors can be a run's last: the script ends the run when
        # it is, as the orchestrator's commit would (store.end_ops).
        body["end"] = {
            "run": c.run_id,
            "event": orch.store.event_json(at, RunState.COMPLETED),
            "hooks": listened(RunState.COMPLETED.value),
            "active": key(k.runs_active),
            "ended": key(k.runs_ended),
            "events": key(k.events(c.run_id)),
            "due": key(k.due),
        }
    return Handoff(json.dumps(body, separators=(",", ":")), keys, at)


def _joins(
    orch: Orchestrator, c: Compiled, slug: str, outputs: list[Artifact]
) -> tuple[set[str], Inputs | None]:
    """The successors of ``slug`` this completion makes ready although they depend on other
    nodes too (pending, their barrier waiting for ``slug`` alone, every other dependency
    completed), and what their launches plan from: those dependencies' artifacts and
    ``outputs``; None when they are too many to read here.

    One HMGET of the joins' states and barriers and their other dependencies' states; the
    artifacts only when a join is ready, each dependency read up to an even share of
    ``MAX_JOIN_INPUTS``. Joins with more than ``MAX_JOIN_DEPENDENCIES`` other dependencies are
    left to the orchestrator unread (every completion of a wide join reading all its
    dependencies' states would cost the square of their number).
    """
    preds = c.graph.predecessors
    joins = [
        s
        for s in c.graph.successors[slug]
        if preds[s] != (slug,) and len(preds[s]) <= MAX_JOIN_DEPENDENCIES + 1
    ]
    others = list(dict.fromkeys(p for s in joins for p in preds[s] if p != slug))
    if not joins or len(others) > MAX_JOIN_DEPENDENCIES:
        return set(), None
    store = orch.store
    done = NodeState.COMPLETED.value
    fields = [*joins, *(f"{s}:wait" for s in joins), *others]
    values = dict(zip(fields, store.r.hmget(store.keys.nodes(c.run_id), fields), strict=True))
    ready = {
        s
        for s in joins
        if values[s] == NodeState.PENDING.value
        and values[f"{s}:wait"] == "1"
        and all(values[p] == done for p in preds[s] if p != slug)
    }
    if not ready:
        return ready, None
    needed = list(dict.fromkeys(p for s in ready for p in preds[s] if p != slug))
    replies = store.inline_outputs(c.run_id, needed, max(1, MAX_JOIN_INPUTS // len(needed)))
    if replies is None:
        return ready, None
    inputs = Inputs(store, c.run_id, c.nodes, {slug: done, **{p: done for p in needed}})
    inputs.artifacts[slug] = outputs
    inputs.replies.update(replies)
    return ready, inputs
