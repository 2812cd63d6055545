"""Driving a rollback (DESIGN §7): compensations in reverse dependency order.

A run that fails under ``fail_run`` (and whose pipeline has a plugin with a rollback) goes to
``rolling_back``. Its queued tasks are cancelled when delivered, running ones finish; when no
node runs any more (the run has *drained*), ``start`` plans the walk back (``compensation``)
and launches the compensations of the nodes whose dependants are all done. Each step is a
version-checked commit under the run lock, like the forward path:

- ``start`` is fenced by the run's ``comp_started`` field, so it plans once;
- ``launch`` marks a node's tasks for compensation with ``mark_compensations.lua`` (each task
  at most once per round) before sending them; a crash in between leaves the node in the
  *comp launching* set, which the reconciler resumes;
- ``advance`` settles nodes whose compensations all finished (``finish_compensation.lua`` put
  them in the compensation settle set), cascades, and ends the run ``rolled_back`` or
  ``rollback_failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagworker.compensation import CompDecision, CompState
from dagworker.compensation import advance as comp_advance
from dagworker.compensation import start as comp_start
from dagworker.faults import crash_point
from dagworker.states import NodeState, RunState, check_run_transition
from dagworker.store import LazyMap, now

if TYPE_CHECKING:
    from dagworker.orchestrator import Compiled, Orchestrator

log = logging.getLogger("dagworker.rollback")

SCAN_BATCH = 500


def _needs(orch: Orchestrator, c: Compiled, counters: Mapping[str, Mapping[str, str]]) -> Any:
    """``needs(slug)``: the node has finished tasks its plugin can compensate, not yet undone."""
    cache = dict(counters)

    def needs(slug: str) -> bool:
        node = c.nodes[slug]
        if node.plugin not in orch.registry:
            return False
        plugin = orch.registry.get(node.plugin)
        if plugin.rollback_func is None:
            return False
        if slug not in cache:
            cache[slug] = orch.store.node_counters(c.run_id, [slug])[slug]
        v = cache[slug]
        if v.get("reused_from"):
            return False  # replayed from another run: that run owns the effects
        undoable = int(v.get("completed", 0))
        if plugin.compensate_failed:
            undoable += int(v.get("failed", 0))
        return undoable > int(v.get("compensated", 0))

    return needs


def _decision_ops(
    orch: Orchestrator, c: Compiled, decision: CompDecision, at: float
) -> list[tuple[Any, ...]]:
    k = orch.store.keys
    ops: list[tuple[Any, ...]] = []
    for slug, state in decision.states.items():
        ops.append((k.nodes(c.run_id), "hset", f"{slug}:rb", state.value))
    for slug, wait in decision.waits.items():
        ops.append((k.nodes(c.run_id), "hset", f"{slug}:rbwait", wait))
    for slug in decision.claimed:
        ops.append((k.comp_launching(c.run_id), "zadd", at, slug))
        ops.append((k.node(c.run_id, slug), "hset", "rb_started_at", at))
    if decision.finished:
        ops.append((k.run(c.run_id), "hincrby", "comp_finished", decision.finished))
    return ops


def _end_ops(
    orch: Orchestrator, c: Compiled, run: Mapping[str, str], decision: CompDecision, at: float
) -> list[tuple[Any, ...]]:
    """End the rollback: ``rolled_back``, or ``rollback_failed`` naming what was not undone."""
    store = orch.store
    stored = store.nodes(c.run_id)  # once per rollback, at its end: may read every node
    states = {s: decision.states.get(s, stored.get(f"{s}:rb")) for s in c.graph.order}
    failed = [s for s in c.graph.order if states[s] == CompState.FAILED]
    blocked = [s for s in c.graph.order if states[s] == CompState.BLOCKED]
    cause = run.get("cause") or run.get("error") or ""
    if not failed:
        return store.end_ops(c.run_id, RunState.ROLLED_BACK, at, cause or None)
    counters = store.node_counters(c.run_id, failed)
    parts = []
    for slug in failed:
        detail = counters[slug].get("rb_error") or "compensation failed"
        parts.append(f"node {slug!r} ({counters[slug].get('rb_failed', '?')} task(s): {detail})")
    message = "rollback failed: could not undo " + ", ".join(parts)
    if blocked:
        message += "; left alone (ancestors of what could not be undone): " + ", ".join(blocked)
    if cause:
        message = f"{cause}; {message}"
    return store.end_ops(c.run_id, RunState.ROLLBACK_FAILED, at, message)


def _commit(
    orch: Orchestrator,
    run_id: str,
    decide: Callable[[Compiled, Mapping[str, str]], tuple[list[tuple[Any, ...]], list[str]] | None],
) -> list[str]:
    """Decide under the run lock and commit, deciding again if the run moved meanwhile."""
    store = orch.store
    c = orch.compiled(run_id)
    while True:
        lock, run = store.lock_run(run_id)  # one round trip for both
        try:
            result = decide(c, run)
            if result is None:
                return []
            ops, claimed = result
            if store.commit(run_id, int(run.get("version") or 0), ops, lock) >= 0:
                return claimed
        finally:
            lock.release()  # nothing to do when the commit released it


def start(orch: Orchestrator, run_id: str) -> None:
    """Plan the rollback of a drained run and launch the first compensations; runs once."""

    def decide(
        c: Compiled, run: Mapping[str, str]
    ) -> tuple[list[tuple[Any, ...]], list[str]] | None:
        if run["status"] != RunState.ROLLING_BACK.value or run.get("comp_started"):
            return None
        if int(run.get("nodes_running") or 0) > 0:
            return None  # not drained yet: the last node to settle starts us
        counters = orch.store.node_counters(run_id, c.graph.order)
        decision = comp_start(c.graph, _needs(orch, c, counters))
        at = now()
        k = orch.store.keys
        ops: list[tuple[Any, ...]] = [
            (k.run(run_id), "hset", "comp_started", at),
            (k.run(run_id), "hset", "comp_finished", 0),
        ]
        ops += _decision_ops(orch, c, decision, at)
        if decision.is_complete(0, len(c.graph.order)):
            ops += _end_ops(orch, c, run, decision, at)
        return ops, decision.claimed

    claimed = _commit(orch, run_id, decide)
    log.info("run %s: rollback started; compensating %s first", run_id, claimed or "nothing")
    for slug in claimed:
        launch(orch, run_id, slug)


def launch(orch: Orchestrator, run_id: str, slug: str) -> None:
    """Mark and send the compensations of one node's finished tasks; safe to repeat."""
    store = orch.store
    c = orch.compiled(run_id)
    node = c.nodes[slug]
    plugin = orch.registry.get(node.plugin)
    total = store.launch_cursor(run_id, slug)
    for first in range(0, total, SCAN_BATCH):
        last = min(total, first + SCAN_BATCH) - 1
        states = store.task_states(run_id, slug, first, last)
        candidates = [
            first + i
            for i, state in enumerate(states)
            if state == "completed" or (state == "failed" and plugin.compensate_failed)
        ]
        if candidates:
            store.mark_compensations(run_id, slug, candidates, plugin.compensate_failed)
        # Everything still queued in this range, also what a crashed launcher marked: a
        # duplicate message is harmless (begin_compensation.lua fences it).
        queued = store.queued_compensations(run_id, slug, first, last)
        crash_point("before_comp_publish", slug)
        if queued:
            orch.publisher.publish_compensations(run_id, node, plugin, queued)
        store.r.zadd(store.keys.comp_launching(run_id), {slug: now()}, xx=True)
    if store.finish_comp_launch(run_id, slug):
        advance(orch, run_id)


def advance(orch: Orchestrator, run_id: str) -> None:
    """Settle nodes whose compensations finished; launch the ones that became ready."""
    store, k = orch.store, orch.store.keys

    def decide(
        c: Compiled, run: Mapping[str, str]
    ) -> tuple[list[tuple[Any, ...]], list[str]] | None:
        pending = store.comp_settle_pending(run_id)
        if not pending:
            return None
        ops: list[tuple[Any, ...]] = [(k.comp_settle(run_id), "srem", s) for s in pending]
        if run["status"] != RunState.ROLLING_BACK.value:
            return ops, []
        counters = store.node_counters(run_id, sorted(pending))
        outcomes = {s: int(v.get("rb_failed", 0)) == 0 for s, v in counters.items()}
        near = set(pending) | {p for s in pending for p in c.graph.predecessors[s]}
        near |= {s for p in list(near) for s in c.graph.successors[p]}
        fields = [f"{s}:{suffix}" for s in near for suffix in ("rb", "rbwait")]
        raw = store.node_fields(run_id, fields)
        decision = comp_advance(
            c.graph,
            LazyMap(raw, CompState, suffix=":rb"),
            LazyMap(raw, int, suffix=":rbwait"),
            outcomes,
            _needs(orch, c, counters),
        )
        at = now()
        ops += _decision_ops(orch, c, decision, at)
        for slug, ok in outcomes.items():
            if ok and decision.states.get(slug) is CompState.DONE:
                ops.append((k.nodes(run_id), "hset", slug, NodeState.ROLLED_BACK.value))
                ops.append((k.node(run_id, slug), "hset", "rb_finished_at", at))
        if decision.is_complete(int(run.get("comp_finished") or 0), len(c.graph.order)):
            ops += _end_ops(orch, c, run, decision, at)
        return ops, decision.claimed

    claimed = _commit(orch, run_id, decide)
    for slug in claimed:
        launch(orch, run_id, slug)


def repair(orch: Orchestrator, run_id: str, cutoff: float) -> int:
    """Reconciler pass for a run rolling back: resume stalled launches, start, settle."""
    store = orch.store
    repaired = 0
    for slug in store.stale_comp_launches(run_id, cutoff):
        log.warning("reconciler: run %s node %s: resuming compensation launch", run_id, slug)
        store.r.zadd(store.keys.comp_launching(run_id), {slug: now()})
        launch(orch, run_id, slug)
        repaired += 1
    run = store.run(run_id)
    if not run.get("comp_started") and int(run.get("nodes_running") or 0) <= 0:
        start(orch, run_id)
        repaired += 1
    if store.comp_settle_pending(run_id):
        advance(orch, run_id)
        repaired += 1
    return repaired


def request(orch: Orchestrator, run_id: str) -> bool:
    """Roll back on request: a live, completed, failed or cancelled run, or resume a failed
    rollback (its failed compensations are tried again, with new attempt numbers).

    A live run stops first: its queued tasks are cancelled on delivery, running ones finish.
    Returns False when the run is already rolling back or rolled back.
    """
    store, k = orch.store, orch.store.keys
    changed = False

    def decide(
        c: Compiled, run: Mapping[str, str]
    ) -> tuple[list[tuple[Any, ...]], list[str]] | None:
        nonlocal changed
        current = RunState(run["status"])
        if current in (RunState.ROLLING_BACK, RunState.ROLLED_BACK):
            return None
        check_run_transition(current, RunState.ROLLING_BACK)
        at = now()
        if current is RunState.ROLLBACK_FAILED:
            cause = run.get("cause") or ""
        else:
            cause = run.get("error") or "rolled back on request"
        ops: list[tuple[Any, ...]] = [
            (k.run(run_id), "hset", "status", RunState.ROLLING_BACK.value),
            (k.run(run_id), "hset", "finished_at", ""),
            (k.run(run_id), "hset", "error", cause),
            (k.run(run_id), "hset", "cause", cause),
            (k.run(run_id), "hdel", "comp_started"),
            (k.runs_active, "zadd", float(run.get("created_at") or at), run_id),
            (k.events(run_id), "rpush", store.event_json(at, RunState.ROLLING_BACK, "on request")),
        ]
        if current is RunState.ROLLBACK_FAILED:
            ops += _reset_failed_compensations(orch, c)
        changed = True
        return ops, []

    _commit(orch, run_id, decide)
    if changed:
        from dagworker.subpipeline import stop_children

        stop_children(orch, run_id)  # a live run's running children stop, then are undone
        start(orch, run_id)
    return changed


def _reset_failed_compensations(orch: Orchestrator, c: Compiled) -> list[tuple[Any, ...]]:
    """A new round for the nodes whose compensation failed: their failed tasks are queued
    again (with the next attempt number) when the rollback is replanned."""
    store, k = orch.store, orch.store.keys
    states = store.nodes(c.run_id)
    ops: list[tuple[Any, ...]] = []
    for slug in c.graph.order:
        if states.get(f"{slug}:rb") != CompState.FAILED.value:
            continue
        for field in ("rb_tasks", "rb_done", "rb_failed", "rb_launched", "rb_error"):
            ops.append((k.node(c.run_id, slug), "hdel", field))
        total = store.launch_cursor(c.run_id, slug)
        for first in range(0, total, SCAN_BATCH):
            last = min(total, first + SCAN_BATCH) - 1
            pipe = store.r.pipeline(transaction=False)
            for i in range(first, last + 1):
                pipe.hget(k.task(c.run_id, slug, i), "rb_state")
            for offset, rb in enumerate(pipe.execute()):
                if rb == "failed":
                    ops.append((k.task(c.run_id, slug, first + offset), "hdel", "rb_state"))
    return ops
