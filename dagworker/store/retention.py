"""Retention: finished runs are deleted once ``DAGWORKER_RESULT_TTL`` seconds passed since they
ended (0 keeps them for ever). The reconciler sweeps (``dagworker.reconciler``).

A run that ends is added to ``runs:ended`` with its finish time, in the commit or script that
ends it. A sweep takes the runs of that set that ended before the cutoff, oldest first;
``purge_run.lua`` deletes the run hash in one atomic step after checking that the run is still
finished and that its finish time is before the cutoff (a run resumed since, by retry or
rollback, is not deleted); the run's other keys are derived from it (nodes from the node-states
hash, tasks from each node's task count) and unlinked after, task keys first and the
node-states hash last, so that a deletion interrupted midway is resumed from ``runs:purging``
with everything it needs still there.
"""

from __future__ import annotations

from collections.abc import Iterator

from dagworker.states import RUN_TERMINAL
from dagworker.store.base import StoreBase, now

#: Keys unlinked per command, and per pipelined round trip (100 commands).
UNLINK_CHUNK = 1_000
UNLINK_PIPELINE = 100
#: Runs looked at per round trip of the sweep, and runs of the backfill per ZSCAN step.
SWEEP_BATCH = 100
BACKFILL_STEP = 500


class RetentionStore(StoreBase):
    """Expiry of finished runs."""

    def purge_expired(self, at: float, budget: int = 200_000, backfill_steps: int = 20) -> int:
        """Delete the runs that finished ``result_ttl`` or more before ``at``, oldest first,
        resuming deletions an earlier sweep left unfinished; stops once about ``budget`` keys
        are deleted (one run at least). Returns the number of runs deleted."""
        ttl = self.settings.result_ttl
        if ttl <= 0:
            return 0
        self.backfill_ended(backfill_steps)
        deleted, purged = 0, 0
        for run_id in self.r.zrange(self.keys.runs_purging, 0, SWEEP_BATCH - 1):
            deleted += self._delete_run_keys(run_id)
            purged += 1
            if deleted >= budget:
                return purged
        cutoff = at - ttl
        k = self.keys
        terminal = [s.value for s in RUN_TERMINAL]
        while deleted < budget:
            batch = self.r.zrangebyscore(k.runs_ended, "-inf", cutoff, start=0, num=SWEEP_BATCH)
            if not batch:
                break
            for run_id in batch:
                started = self._scripts["purge_run"](
                    keys=[k.run(run_id), k.runs_ended, k.runs_all, k.runs_purging],
                    args=[run_id, cutoff, now(), *terminal],
                )
                if started:
                    deleted += self._delete_run_keys(run_id)
                    purged += 1
                    if deleted >= budget:
                        break
        return purged

    def _delete_run_keys(self, run_id: str) -> int:
        """Unlink what ``purge_run.lua`` left of a run; the run leaves ``runs:purging`` last."""
        keys = list(self._run_keys(run_id))
        pipe = self.r.pipeline(transaction=False)
        for n, i in enumerate(range(0, len(keys), UNLINK_CHUNK), 1):
            pipe.unlink(*keys[i : i + UNLINK_CHUNK])
            if n % UNLINK_PIPELINE == 0:
                pipe.execute()
        pipe.zrem(self.keys.runs_purging, run_id)
        pipe.execute()
        return len(keys)

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

    def backfill_ended(self, steps: int) -> None:
        """Add the finished runs recorded before ``runs:ended`` existed (an upgrade) to it, a
        ZSCAN step of ``runs:all`` at a time, its cursor kept in Redis; once round, never
        again. Every run that ends after the upgrade is added when it ends."""
        k = self.keys
        cursor = self.r.get(k.runs_backfill)
        if cursor == "done":
            return
        position = int(cursor or 0)
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
                self.r.zadd(k.runs_ended, ended, nx=True)
            if position == 0:
                self.r.set(k.runs_backfill, "done")
                return
            self.r.set(k.runs_backfill, position)
