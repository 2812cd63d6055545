"""Run control (DESIGN §7): cancel, pause, resume, retry, replay (rollback: ``rollback``).

Each is one version-checked commit under the run lock, so it is safe against concurrent
completions, and idempotent: asking twice gives the same end state. Queued messages are not
hunted down in the broker: a task whose run is no longer active is recorded as cancelled when
its message is delivered (``begin_task.lua``), so cancel cannot race a publish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagworker.errors import IllegalTransition, RunRefused, did_you_mean
from dagworker.hooks import HOOK_EVENTS
from dagworker.orchestrator import fingerprint
from dagworker.states import NodeState, RunState, check_run_transition
from dagworker.store import now

if TYPE_CHECKING:
    from dagworker.orchestrator import Compiled, Orchestrator


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
            ops: list[tuple[Any, ...]]
            if target is RunState.CANCELLED:
                ops = store.end_ops(run_id, target, at, "cancelled on request")
            else:
                ops = [
                    (k.run(run_id), "hset", "status", target.value),
                    (k.events(run_id), "rpush", store.event_json(at, target)),
                ]
            claimed: list[str] = []
            states = store.nodes(run_id)  # a user action, not the hot path: may read all
            if target is RunState.CANCELLED:
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
    """Stop new dispatches; queued tasks are cancelled on delivery, running ones finish; the
    run's active child runs (sub-pipelines) are cancelled too."""
    from dagworker.subpipeline import stop_children

    try:
        changed, _ = _transition(
            orch, run_id, RunState.CANCELLED, idempotent_from=RunState.CANCELLED
        )
    except IllegalTransition as exc:
        raise IllegalTransition(f"run {run_id}: {exc}") from None
    stop_children(orch, run_id)
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


# -- retry ---------------------------------------------------------------------------------------

#: What ``retry`` does when the run input given differs from the run's (by fingerprint).
ON_INPUT_CHANGE = ("reuse", "raise", "reset")
_KEPT = frozenset({NodeState.COMPLETED.value, NodeState.FILTERED.value})


@dataclass
class _Restart:
    """What a retry sends round again, decided under the lock and done after the commit."""

    ops: list[tuple[Any, ...]] = field(default_factory=list)
    republish: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    claimed: list[str] = field(default_factory=list)
    epoch: str = ""


def retry(
    orch: Orchestrator,
    run_id: str,
    new_input: Mapping[str, Any] | None = None,
    on_change: str = "raise",
    drain_timeout: float = 60.0,
) -> bool:
    """Restart a failed or cancelled run under the same id, reusing its completed work.

    Completed and filtered nodes are kept; a failed or cancelled node's failed and cancelled
    tasks run again (next attempt number, same decided inputs) while its completed tasks are
    kept; nodes that never ran launch as their dependencies allow. With ``new_input`` whose
    fingerprint differs: ``raise`` refuses, ``reuse`` keeps the completed work (the nodes that
    run again see the new input), ``reset`` discards all work and starts over.
    """
    if on_change not in ON_INPUT_CHANGE:
        raise RunRefused(f"on_change={on_change!r}: use one of {', '.join(ON_INPUT_CHANGE)}")
    store = orch.store
    deadline = time.monotonic() + drain_timeout
    while True:
        with store.lock(run_id):
            run = store.run(run_id)
            current = RunState(run["status"])
            if current not in (RunState.FAILED, RunState.CANCELLED):
                hint = " (its work was undone: use replay)" if current.terminal else ""
                raise IllegalTransition(
                    f"run {run_id} is {current.value}; only a failed or cancelled run can be "
                    f"retried{hint}"
                )
            draining = int(run.get("nodes_running") or 0) > 0
            if draining and time.monotonic() > deadline:
                raise RunRefused(
                    f"run {run_id}: tasks are still running after {drain_timeout:g}s; "
                    "retry once they have finished"
                )
            plan = None if draining else _restart(orch, run_id, run, new_input, on_change)
        if plan is not None:
            _send(orch, run_id, plan)
            return True
        # A run fails fast: its queued tasks are being cancelled and running ones finish.
        # Wait for that, outside the lock, rather than race them.
        time.sleep(0.05 if draining else 0.0)


def _restart(
    orch: Orchestrator,
    run_id: str,
    run: Mapping[str, str],
    new_input: Mapping[str, Any] | None,
    on_change: str,
) -> _Restart | None:
    """Commit the restart (under the caller's lock); None if the run moved meanwhile."""
    store, k = orch.store, orch.store.keys
    reset = False
    epoch = run.get("epoch") or ""
    at = now()
    ops: list[tuple[Any, ...]] = []
    if new_input is not None and fingerprint(new_input) != run.get("input_fp"):
        if on_change == "raise":
            raise RunRefused(
                f"run {run_id}: the run input changed (fingerprint "
                f"{run.get('input_fp')} -> {fingerprint(new_input)}); pass "
                "on_change='reuse' to keep the completed work or 'reset' to redo it all"
            )
        reset = on_change == "reset"
        epoch = str(int(epoch or 0) + 1)
        ops += [
            (k.run(run_id), "hset", "input", json.dumps(dict(new_input))),
            (k.run(run_id), "hset", "input_fp", fingerprint(new_input)),
            (k.run(run_id), "hset", "epoch", epoch),
        ]
    c = orch.compiled(run_id)
    plan = _restart_plan(orch, c, run, reset, at)
    ops += plan.ops
    ops += [
        (k.run(run_id), "hset", "status", RunState.RUNNING.value),
        (k.run(run_id), "hset", "error", ""),
        (k.run(run_id), "hset", "finished_at", ""),
        (k.run(run_id), "hset", "failed_nodes", "[]"),
        (k.runs_active, "zadd", float(run["created_at"]), run_id),
        (k.events(run_id), "rpush", store.event_json(at, RunState.RUNNING, "retry")),
    ]
    ops += [(k.run(run_id), "hdel", f"hooks:{e}") for e in sorted(HOOK_EVENTS)]
    if store.commit(run_id, int(run.get("version") or 0), ops) < 0:
        return None
    plan.epoch = epoch
    return plan


def _send(orch: Orchestrator, run_id: str, plan: _Restart) -> None:
    """After the commit, outside the lock: resend the reset tasks, launch the claimed nodes."""
    c = orch.compiled(run_id, plan.epoch)
    for slug, tasks in plan.republish.items():
        node = c.nodes[slug]
        orch.publish(run_id, node, orch.registry.get(node.plugin), tasks)
    for slug in plan.claimed:
        orch.launch(run_id, slug)


def _restart_plan(
    orch: Orchestrator, c: Compiled, run: Mapping[str, str], reset: bool, at: float
) -> _Restart:
    """Per node: keep, resend its failed tasks, or reset it to pending; then claim roots."""
    store, k, run_id = orch.store, orch.store.keys, c.run_id
    states = store.nodes(run_id)  # a user action, not the hot path: may read every node
    counters = store.node_counters(run_id, c.graph.order)
    plan = _Restart()
    new_state: dict[str, str] = {}
    tasks_total = int(run.get("tasks_total") or 0)
    tasks_done = int(run.get("tasks_done") or 0)
    for slug in c.graph.order:
        state, v = states.get(slug, NodeState.PENDING.value), counters[slug]
        if not reset and state in _KEPT:
            new_state[slug] = state
            continue
        tasks = int(v.get("tasks", 0))
        resend: list[tuple[int, int]] = []
        if not reset and tasks and not v.get("launch_failed") and v.get("launched") == "1":
            for first in range(0, tasks, 500):
                last = min(tasks, first + 500) - 1
                for offset, (st, attempt) in enumerate(
                    store.tasks_state(run_id, slug, first, last)
                ):
                    if st in ("failed", "cancelled"):
                        resend.append((first + offset, attempt + 1))
        if resend:
            # Only the tasks that did not complete run again; their inputs were decided once.
            plan.ops += _first_attempts(store, run_id, slug, resend)
            for index, attempt in resend:
                key = k.task(run_id, slug, index)
                ops: list[tuple[Any, ...]] = [
                    (key, "hset", "state", "queued"),
                    (key, "hset", "attempt", attempt),
                ]
                ops += [(key, "hdel", f) for f in ("error", "traceback", "finished_at")]
                plan.ops += ops
            plan.ops += [
                (k.node(run_id, slug), "hset", "failed", 0),
                (k.node(run_id, slug), "hset", "cancelled", 0),
                (k.node(run_id, slug), "hset", "done", v.get("completed", 0)),
                (k.node(run_id, slug), "hdel", "error"),
                (k.node(run_id, slug), "hdel", "finished_at"),
                (k.outbox(run_id), "zadd", at, f"{slug}|{resend[0][0]}|{resend[-1][0]}"),
            ]
            plan.republish[slug] = resend
            tasks_done -= len(resend)
            new_state[slug] = NodeState.RUNNING.value
            continue
        # Reset to pending: every trace of the node goes, it will be launched afresh.
        plan.ops += [(k.node(run_id, slug), "del"), (k.counts(run_id, slug), "del")]
        plan.ops += [(k.notable(run_id, slug), "del")]
        for index in range(tasks):
            plan.ops += [
                (k.task(run_id, slug, index), "del"),
                (k.outputs(run_id, slug, index), "del"),
                (k.history(run_id, slug, index), "del"),
            ]
        tasks_total -= tasks
        tasks_done -= int(v.get("done", 0))
        new_state[slug] = NodeState.PENDING.value
    settled = {s for s, st in new_state.items() if st in _KEPT}
    for slug in c.graph.order:
        wait = sum(p not in settled for p in c.graph.predecessors[slug])
        plan.ops.append((k.nodes(run_id), "hset", f"{slug}:wait", wait))
        plan.ops.append((k.nodes(run_id), "hset", f"{slug}:rb", ""))
        if new_state[slug] == NodeState.PENDING.value and wait == 0:
            plan.claimed.append(slug)
            plan.ops += orch.claim_ops(run_id, slug, at, count=False)
            new_state[slug] = NodeState.RUNNING.value
        else:
            plan.ops.append((k.nodes(run_id), "hset", slug, new_state[slug]))
    running = sum(st == NodeState.RUNNING.value for st in new_state.values())
    plan.ops += [
        (k.run(run_id), "hset", "nodes_settled", len(settled)),
        (k.run(run_id), "hset", "nodes_running", running),
        (k.run(run_id), "hset", "tasks_total", tasks_total),
        (k.run(run_id), "hset", "tasks_done", tasks_done),
        (k.run(run_id), "hdel", "comp_started"),
    ]
    return plan


def _first_attempts(
    store: Any, run_id: str, slug: str, resend: list[tuple[int, int]]
) -> list[tuple[Any, ...]]:
    """History entries for first attempts about to be superseded (``finish_task.lua`` writes
    the history list only from a second attempt on, so the first would otherwise be lost)."""
    firsts = [index for index, attempt in resend if attempt == 2]
    pipe = store.r.pipeline(transaction=False)
    for index in firsts:
        pipe.hgetall(store.keys.task(run_id, slug, index))
    ops: list[tuple[Any, ...]] = []
    for index, task in zip(firsts, pipe.execute(), strict=True):
        entry = {
            "kind": "task",
            "attempt": 1,
            "state": task.get("state"),
            "error": task.get("error", ""),
            "started_at": float(task["started_at"]) if task.get("started_at") else None,
            "finished_at": float(task["finished_at"]) if task.get("finished_at") else None,
            "worker": task.get("worker"),
        }
        ops.append((store.keys.history(run_id, slug, index), "rpush", json.dumps(entry)))
    return ops


# -- replay --------------------------------------------------------------------------------------


def replay(orch: Orchestrator, run_id: str, nodes: Sequence[str]) -> str:
    """A new run of the same pipeline and input that reuses the old run's outputs, except for
    ``nodes``, their descendants and whatever did not complete; returns the new run's id."""
    store = orch.store
    run = store.run(run_id)
    current = RunState(run["status"])
    if current in (RunState.ROLLING_BACK, RunState.ROLLED_BACK, RunState.ROLLBACK_FAILED):
        raise IllegalTransition(
            f"run {run_id} is {current.value}: its work was undone, nothing can be reused; "
            "submit a new run instead"
        )
    if not current.terminal:
        raise IllegalTransition(f"run {run_id} is {current.value}; replay a run that has ended")
    c = orch.compiled(run_id)
    unknown = [n for n in nodes if n not in c.nodes]
    if unknown:
        name = unknown[0]
        raise RunRefused(
            f"replay: run {run_id} has no node {name!r};"
            f"{did_you_mean(name, c.nodes) or ' nodes are ' + ', '.join(c.graph.order)}"
        )
    states = store.nodes(run_id)
    rerun = set(nodes) | {s for s in c.graph.order if states.get(s) not in _KEPT}
    rerun |= c.graph.descendants(rerun)
    reused = {s: states[s] for s in c.graph.order if s not in rerun}
    run_input = json.loads(run.get("input") or "{}")
    return orch.start_run(c.pipeline, run_input, reuse=(run_id, reused))
