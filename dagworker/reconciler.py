"""The reconciler: repairs what a crash between two steps leaves behind (DESIGN §6).

Workers run it periodically (``DAGWORKER_RECONCILE_INTERVAL``); one worker at a time does a
pass, under a fleet-wide lock. A pass looks only at active runs and, in each, only at three small
sets, never at every task:

- outbox batches persisted but not confirmed published for longer than the grace period are
  republished (tasks still queued at that attempt; a duplicate message is harmless, the
  finish script fences it);
- nodes claimed whose launch has not finished and has not moved for the grace period are
  launched again (the launch resumes at its cursor);
- nodes waiting in the settle set are settled;
- a run rolling back has its rollback started once it drained, its stalled compensation
  launches resumed and its compensation settle set settled (``rollback.repair``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from dagworker import rollback
from dagworker.orchestrator import Orchestrator
from dagworker.store import now

log = logging.getLogger("dagworker.reconciler")


@dataclass
class Repairs:
    runs: int = 0
    republished: int = 0
    relaunched: int = 0
    settled: int = 0


def reconcile_once(orch: Orchestrator) -> Repairs:
    store = orch.store
    grace = store.settings.publish_grace
    repairs = Repairs()
    cutoff = now() - grace
    for run_id in store.r.zrange(store.keys.runs_active, 0, -1):
        repairs.runs += 1
        try:
            _repair_run(orch, run_id, cutoff, repairs)
        except Exception:  # one broken run must not stop the repair of the others
            log.exception("reconciler: run %s could not be repaired", run_id)
    return repairs


def _repair_run(orch: Orchestrator, run_id: str, cutoff: float, repairs: Repairs) -> None:
    store = orch.store
    for slug, first, last in store.stale_outbox(run_id, cutoff):
        c = orch.compiled(run_id)
        node = c.nodes[slug]
        plugin = orch.registry.get(node.plugin)
        states = store.tasks_state(run_id, slug, first, last)
        todo = [
            (first + i, attempt) for i, (state, attempt) in enumerate(states) if state == "queued"
        ]
        confirm = store.published_commands(run_id, slug, first, last)
        if todo:
            if orch.publisher.publish(run_id, node, plugin, todo, confirm):
                confirm = []
            repairs.republished += len(todo)
            log.warning(
                "reconciler: run %s node %s: republished %d task(s)", run_id, slug, len(todo)
            )
        if confirm:
            store.published(run_id, slug, first, last)
    for slug in store.stale_launches(run_id, cutoff):
        log.warning("reconciler: run %s node %s: resuming an interrupted launch", run_id, slug)
        store.r.zadd(store.keys.launching(run_id), {slug: now()})
        orch.launch(run_id, slug)
        repairs.relaunched += 1
    if store.settle_pending(run_id):
        repairs.settled += 1
        orch.advance(run_id)
    if store.run(run_id).get("status") == "rolling_back":
        repairs.relaunched += rollback.repair(orch, run_id, cutoff)


#: A poller that claimed a due retry has this long to publish it before another one may.
DUE_LEASE_S = 30.0


def publish_due(orch: Orchestrator, limit: int = 100) -> int:
    """Send the retries whose backoff has elapsed and the hooks of runs that ended."""
    store = orch.store
    sent = 0
    for member in store.claim_due(DUE_LEASE_S, limit):
        kind, _, rest = member.partition("|")
        try:
            if kind == "retry":
                run_id, slug, index, attempt = rest.rsplit("|", 3)
                node = orch.compiled(run_id).nodes[slug]
                plugin = orch.registry.get(node.plugin)
                orch.publisher.publish(run_id, node, plugin, [(int(index), int(attempt))])
            elif kind == "comp":
                run_id, slug, index, attempt = rest.rsplit("|", 3)
                node = orch.compiled(run_id).nodes[slug]
                plugin = orch.registry.get(node.plugin)
                orch.publisher.publish_compensations(
                    run_id, node, plugin, [(int(index), int(attempt))]
                )
            elif kind == "hook":
                run_id, event = rest.rsplit("|", 1)
                orch.publisher.publish_hooks(run_id, event)
        except Exception:
            log.exception("due entry %s could not be sent", member)
            continue
        store.unschedule(member)
        sent += 1
    return sent


def try_reconcile(orch: Orchestrator, interval: float) -> Repairs | None:
    """Run a pass if no other worker ran one in the last ``interval`` seconds."""
    store = orch.store
    if not store.r.set(store.keys.reconciler_lock, orch.hostname, nx=True, px=int(interval * 1000)):
        return None
    started = time.monotonic()
    repairs = reconcile_once(orch)
    if repairs.republished or repairs.relaunched or repairs.settled:
        log.warning("reconciler pass in %.3fs: %s", time.monotonic() - started, repairs)
    return repairs
