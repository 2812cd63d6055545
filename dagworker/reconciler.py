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
  launches resumed and its compensation settle set settled (``rollback.repair``);
- a run that made no progress for a visibility timeout plus the grace period has the tasks of
  its running nodes checked for messages that vanished (see ``_repair_lost_messages``).

A pass ends with the retention sweep: runs that finished ``DAGWORKER_RESULT_TTL`` seconds ago
are deleted (``dagworker.store.retention``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from dagworker import rollback
from dagworker.errors import RunNotFound
from dagworker.metrics import RUNS_DELETED, recorder
from dagworker.orchestrator import Orchestrator
from dagworker.store import Store, now

log = logging.getLogger("dagworker.reconciler")


@dataclass
class Repairs:
    runs: int = 0
    republished: int = 0
    relaunched: int = 0
    settled: int = 0
    resent: int = 0
    purged: int = 0


def reconcile_once(orch: Orchestrator) -> Repairs:
    store = orch.store
    grace = store.settings.publish_grace
    repairs = Repairs()
    cutoff = now() - grace
    active = store.r.zrange(store.keys.runs_active, 0, -1)
    for run_id in active:
        repairs.runs += 1
        try:
            _repair_run(orch, run_id, cutoff, repairs)
            _repair_lost_messages(orch, run_id, repairs)
        except Exception:  # one broken run must not stop the repair of the others
            log.exception("reconciler: run %s could not be repaired", run_id)
    ended = set(store.r.hkeys(store.keys.progress)) - set(active)
    if ended:
        store.r.hdel(store.keys.progress, *ended)
    repairs.purged = store.purge_expired(now())  # (it logs its own errors and never raises)
    if repairs.purged:
        recorder.count(RUNS_DELETED, n=repairs.purged)
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


def _repair_lost_messages(orch: Orchestrator, run_id: str, repairs: Repairs) -> None:
    """Resend the tasks of a stalled run whose message vanished from the broker.

    kombu's Redis transport pops a message (BRPOP) before it records it as unacknowledged: a
    worker killed in between loses the message, and neither the visibility timeout nor the
    outbox (already confirmed) brings it back; the task stays ``queued`` (or ``retrying``) for
    ever. Seen in ``make chaos``. Such a run stops progressing, so only a run whose version and
    tasks-done count have not moved for a visibility timeout plus the grace period is looked at,
    once per period; and a task is resent only when its message is provably gone: its queue is
    empty and no unacknowledged message carries its id. Resent tasks count ``republished`` in
    their hash. Only for a broker that is this Redis (AMQP brokers do not lose popped messages).
    """
    store, k = orch.store, orch.store.keys
    settings = store.settings
    if settings.effective_broker_url != settings.redis_url:
        return
    run = store.run(run_id)
    if run.get("status") != "running":  # a paused run does not progress, by design
        return
    mark = f"{run.get('version', 0)}:{run.get('tasks_done', 0)}"
    at = now()
    seen = store.r.hget(k.progress, run_id)
    since = float(seen.split("|")[1]) if seen and seen.split("|")[0] == mark else None
    if since is None:
        store.r.hset(k.progress, run_id, f"{mark}|{at}")
        return
    if at - since < settings.visibility_timeout + settings.publish_grace:
        return
    store.r.hset(k.progress, run_id, f"{mark}|{at}")  # next look after another period
    c = orch.compiled(run_id)
    states = store.nodes(run_id)
    for slug, node in c.nodes.items():
        total = store.launch_cursor(run_id, slug) if states.get(slug) == "running" else 0
        if not total:
            continue
        todo = []
        for index, (state, attempt) in enumerate(store.tasks_state(run_id, slug, 0, total - 1)):
            due = f"retry|{run_id}|{slug}|{index}|{attempt}"
            if state == "queued" or (state == "retrying" and store.r.zscore(k.due, due) is None):
                todo.append((index, attempt))
        plugin = orch.registry.get(node.plugin)
        queue = node.queue or plugin.queue or settings.default_queue
        if not todo or store.r.llen(k.broker_queue(queue)):
            continue  # nothing waits, or its message may still be in the queue
        delivered = _unacked_task_ids(store)
        todo = [(i, a) for i, a in todo if f"{run_id}:{slug}:{i}:{a}" not in delivered]
        if not todo:
            continue
        orch.publisher.publish(run_id, node, plugin, todo)
        pipe = store.r.pipeline(transaction=False)
        for index, _ in todo:
            pipe.hincrby(k.task(run_id, slug, index), "republished", 1)
        pipe.execute()
        repairs.resent += len(todo)
        log.warning(
            "reconciler: run %s node %s: no progress for %.0fs and no message; resent %d task(s)",
            run_id,
            slug,
            at - since,
            len(todo),
        )


def _unacked_task_ids(store: Store) -> set[str]:
    """Task ids of the messages workers hold (a few per worker: prefetch 1)."""
    ids = set()
    for raw in store.r.hvals(store.keys.broker_unacked):
        try:
            ids.add(str(json.loads(raw)[0]["headers"]["id"]))
        except (ValueError, LookupError, TypeError):
            continue
    return ids


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
                if not store.run_exists(run_id):
                    raise RunNotFound(run_id)  # deleted (retention): no hooks task to send
                orch.publisher.publish_hooks(run_id, event)
        except RunNotFound:
            # its run was deleted (DAGWORKER_RESULT_TTL) while the entry waited: nothing to send
            log.warning("due entry %s: its run no longer exists; dropped", member)
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
    if repairs.republished or repairs.relaunched or repairs.settled or repairs.resent:
        log.warning("reconciler pass in %.3fs: %s", time.monotonic() - started, repairs)
    if repairs.purged:
        log.info(
            "reconciler: %d finished run(s) past DAGWORKER_RESULT_TTL deleted in %.3fs",
            repairs.purged,
            time.monotonic() - started,
        )
    return repairs
