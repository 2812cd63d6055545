"""Retention: finished runs are deleted once ``DAGWORKER_RESULT_TTL`` seconds passed since they
ended (0 keeps them for ever). The reconciler sweeps (``dagworker.reconciler``).

A run that ends is added to ``runs:ended`` with its finish time, in the commit or script that
ends it. A sweep takes the runs of that set that ended before the cutoff, oldest first;
``purge_run.lua`` deletes the run hash in one atomic step after checking that the run may go
(finished, before the cutoff, no task in flight, not the child of a run that exists: see the
script); the run's other keys are derived from it (nodes from the node-states hash, tasks from
each node's task count, child runs from its children set) and unlinked after, task keys first
and the node-states hash last, so that a deletion interrupted midway is resumed from
``runs:purging`` with everything it needs still there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dagworker.states import RUN_TERMINAL
from dagworker.store.base import StoreBase, now

log = logging.getLogger("dagworker.retention")

#: Keys unlinked per command, and commands per pipelined round trip.
UNLINK_CHUNK = 1_000
UNLINK_PIPELINE = 50
#: Runs looked at per read of the queue, and runs of the backfill per ZSCAN step.
SWEEP_BATCH = 100
BACKFILL_STEP = 500
#: The backfill goes round the run list again this long after its last round: runs ended by
#: workers or clients of an earlier release (a rolling upgrade) are not queued when they end.
BACKFILL_EVERY_S = 86_400.0
#: A cutoff no finish time reaches: a child run goes with its parent, whenever it ended and
#: whether tasks of it are in flight or not.
FOREVER = 1e18


class RetentionStore(StoreBase):
    """Expiry of finished runs."""

    def purge_expired(
        self,
        at: float,
        budget_keys: int = 200_000,
        budget_s: float = 1.0,
        backfill_steps: int = 20,
        ttl: float | None = None,
    ) -> int:
        """Delete the runs that finished ``ttl`` (default ``result_ttl``) or more before ``at``,
        oldest first, resuming deletions an earlier sweep left unfinished. A run is deleted
        whole; no run is begun once ``budget_keys`` keys were deleted or ``budget_s`` seconds
        spent (the next sweep goes on). Returns the number of runs deleted, child runs
        included."""
        ttl = self.settings.result_ttl if ttl is None else ttl
        if ttl <= 0:
            return 0
        started = time.monotonic()
        k = self.keys
        deleted, purged = 0, 0

        def spent() -> bool:
            return deleted >= budget_keys or time.monotonic() - started >= budget_s

        try:
            self.backfill_ended(at, backfill_steps)
            for run_id in self.r.zrange(k.runs_purging, 0, SWEEP_BATCH - 1):
                if self.r.zscore(k.runs_purging, run_id) is None:
                    continue  # a child, deleted with its parent just before
                if self.run_exists(run_id):
                    # Created again (a deterministic child id) since its deletion began: the
                    # new run is not deleted; what is left of the old one is shared with it.
                    log.warning("retention: run %s exists again; its deletion is dropped", run_id)
                    self.r.zrem(k.runs_purging, run_id)
                    continue
                n, children = self._delete_run_keys(run_id)
                deleted += n
                purged += 1 + children
                if spent():
                    return purged
            cutoff = at - ttl
            while not spent():
                batch = self.r.zrangebyscore(k.runs_ended, "-inf", cutoff, start=0, num=SWEEP_BATCH)
                if not batch:
                    break
                for run_id in batch:
                    if self._begin_purge(run_id, at, cutoff, ttl):
                        n, children = self._delete_run_keys(run_id)
                        deleted += n
                        purged += 1 + children
                        if spent():
                            break
        except Exception:
            # (a Redis error midway: what was deleted is counted; the next sweep goes on; a
            # failing sweep never stops the reconciler pass it ends)
            log.exception("retention: the sweep stopped after %d run(s)", purged)
        return purged

    def _begin_purge(
        self, run_id: str, at: float, cutoff: float, ttl: float, child: bool = False
    ) -> bool:
        """``purge_run.lua`` for one run: deleted if it finished by ``cutoff``; one with tasks
        in flight only if it finished by ``cutoff - ttl``, else queued again ``ttl`` later. A
        child going with its parent: cutoff FOREVER, ttl 0 (whatever its state, unless it
        runs again)."""
        k = self.keys
        return bool(
            self._scripts["purge_run"](
                keys=[k.run(run_id), k.runs_ended, k.runs_all, k.runs_purging],
                args=[
                    run_id,
                    cutoff,
                    cutoff - ttl,
                    at,
                    k.run("")[:-1],  # the run hash key without the id and its closing brace
                    ttl,
                    "1" if child else "",
                    *(s.value for s in RUN_TERMINAL),
                ],
            )
        )

    def _delete_run_keys(self, run_id: str) -> tuple[int, int]:
        """Unlink what ``purge_run.lua`` left of a run, and its child runs (a sub-pipeline's),
        which are deleted with it; the run leaves ``runs:purging`` last. Returns the number
        of keys and of child runs deleted."""
        k = self.keys
        deleted, children = 0, 0
        for child in sorted(self.r.smembers(k.children(run_id))):
            # a child that is not finished (retried on its own) is kept, queued for later
            if self._begin_purge(child, now(), FOREVER, 0.0, child=True):
                n, grandchildren = self._delete_run_keys(child)
                deleted += n
                children += 1 + grandchildren
        chunk: list[str] = []
        pipe = self.r.pipeline(transaction=False)
        queued = 0
        for key in self._run_keys(run_id):
            chunk.append(key)
            if len(chunk) == UNLINK_CHUNK:
                pipe.unlink(*chunk)
                deleted, chunk, queued = deleted + len(chunk), [], queued + 1
                if queued == UNLINK_PIPELINE:
                    pipe.execute()
                    queued = 0
        if chunk:
            pipe.unlink(*chunk)
            deleted += len(chunk)
        pipe.zrem(k.runs_purging, run_id)
        pipe.execute()
        return deleted, children

    def _run_keys(self, run_id: str) -> Iterator[str]:
        """Every key of a run but its run hash, task keys first, the node-states hash last."""
        k = self.keys
        slugs = [f for f in self.r.hkeys(k.nodes(run_id)) if ":" not in f]
        pipe = self.r.pipeline(transaction=False)
        for slug in slugs:
            pipe.hget(k.node(run_id, slug), "tasks")
        counts = pipe.execute()
        for slug, tasks in zip(slugs, counts, strict=True):
            for index in range(int(tasks or 0)):
                yield from k.task_keys(run_id, slug, index)
        for slug in slugs:
            yield from k.node_keys(run_id, slug)
        yield from k.run_keys(run_id)
        yield k.nodes(run_id)

    def backfill_ended(self, at: float, steps: int) -> None:
        """Queue the finished runs that are not queued (ended by an earlier release, before an
        upgrade or during a rolling one): a ZSCAN step of ``runs:all`` at a time, its cursor
        kept in Redis; a round, then another BACKFILL_EVERY_S after it ended."""
        k = self.keys
        cursor = self.r.get(k.runs_backfill) or "0"
        if cursor.startswith("done:"):
            if at - float(cursor[5:]) < BACKFILL_EVERY_S:
                return
            cursor = "0"
        position = int(cursor)
        terminal = {s.value for s in RUN_TERMINAL}
        for _ in range(steps):
            position, members = self.r.zscan(k.runs_all, position, count=BACKFILL_STEP)
            ids = [member for member, _ in members]
            pipe = self.r.pipeline(transaction=False)
            for run_id in ids:
                pipe.hmget(k.run(run_id), "status", "finished_at", "created_at")
            ended: dict[str, float] = {}
            for run_id, (status, finished, created) in zip(ids, pipe.execute(), strict=True):
                if status in terminal:
                    ended[run_id] = float(finished or created or 0)
            if ended:
                # nx: a queued run keeps its time (or the later one a kept run was given)
                self.r.zadd(k.runs_ended, ended, nx=True)
            if position == 0:
                self.r.set(k.runs_backfill, f"done:{at}")
                return
            self.r.set(k.runs_backfill, position)
