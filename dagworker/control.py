"""Run control (DESIGN §7): cancel, pause, resume.

Each is one version-checked commit under the run lock, so it is safe against concurrent
completions, and idempotent: asking twice gives the same end state. Queued messages are not
hunted down in the broker: a task whose run is no longer active is recorded as cancelled when
its message is delivered (``begin_task.lua``), so cancel cannot race a publish.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dagworker.errors import IllegalTransition
from dagworker.states import NodeState, RunState, check_run_transition
from dagworker.store import now

if TYPE_CHECKING:
    from dagworker.orchestrator import Orchestrator


def _transition(
    orch: Orchestrator, run_id: str, target: RunState, *, idempotent_from: RunState
) -> tuple[bool, list[str]]:
    """Move the run to ``target``; returns (changed, nodes that became claimable)."""
    store, k = orch.store, orch.store.keys
    c = orch.compiled(run_id)
    while True:
        with store.lock(run_id):
            run = store.run(run_id)
            current = RunState(run["status"])
            if current is idempotent_from:
                return False, []
            check_run_transition(current, target)
            at = now()
            ops: list[tuple[Any, ...]] = [
                (k.run(run_id), "hset", "status", target.value),
                (k.events(run_id), "rpush", json.dumps({"at": at, "status": target.value})),
            ]
            claimed: list[str] = []
            states = store.nodes(run_id)  # a user action, not the hot path: may read all
            if target is RunState.CANCELLED:
                ops += [
                    (k.run(run_id), "hset", "finished_at", at),
                    (k.run(run_id), "hset", "error", "cancelled on request"),
                    (k.runs_active, "zrem", run_id),
                    (k.due, "zadd", at, f"hook|{run_id}|{target.value}"),
                ]
                for slug in c.nodes:
                    if states.get(slug) == NodeState.PENDING.value:
                        ops.append((k.nodes(run_id), "hset", slug, NodeState.CANCELLED.value))
                settled = sum(1 for s in c.nodes if states.get(s) == NodeState.PENDING.value)
                ops.append((k.run(run_id), "hincrby", "nodes_settled", settled))
            elif target is RunState.RUNNING:
                claimed = _ready(c.graph.order, c.graph.predecessors, states)
                for slug in claimed:
                    ops += orch.claim_ops(run_id, slug, at)
            if store.commit(run_id, int(run.get("version") or 0), ops) >= 0:
                return True, claimed


def _ready(order: tuple[str, ...], preds: Any, states: dict[str, str]) -> list[str]:
    """Pending nodes whose dependencies all settled without failing (claimed on resume)."""
    good = {NodeState.COMPLETED.value, NodeState.FILTERED.value}
    return [
        slug
        for slug in order
        if states.get(slug) == NodeState.PENDING.value
        and int(states.get(f"{slug}:wait", 0)) == 0
        and all(states.get(p) in good for p in preds[slug])
    ]


def cancel(orch: Orchestrator, run_id: str) -> bool:
    """Stop new dispatches; queued tasks are cancelled on delivery, running ones finish."""
    try:
        changed, _ = _transition(
            orch, run_id, RunState.CANCELLED, idempotent_from=RunState.CANCELLED
        )
    except IllegalTransition as exc:
        raise IllegalTransition(f"run {run_id}: {exc}") from None
    return changed


def pause(orch: Orchestrator, run_id: str) -> bool:
    """No new nodes are launched; tasks already sent run and are recorded."""
    try:
        changed, _ = _transition(orch, run_id, RunState.PAUSED, idempotent_from=RunState.PAUSED)
    except IllegalTransition as exc:
        raise IllegalTransition(f"run {run_id}: {exc}") from None
    return changed


def resume(orch: Orchestrator, run_id: str) -> bool:
    """Launch what became ready while the run was paused."""
    run = orch.store.run(run_id)
    if run["status"] == RunState.RUNNING.value:
        return False
    if run["status"] != RunState.PAUSED.value:
        raise IllegalTransition(f"run {run_id} is {run['status']}, not paused")
    changed, claimed = _transition(orch, run_id, RunState.RUNNING, idempotent_from=RunState.RUNNING)
    for slug in claimed:
        orch.launch(run_id, slug)
    return changed
