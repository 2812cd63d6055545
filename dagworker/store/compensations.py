"""Compensation (rollback) state in Redis: marking, starting and finishing compensations."""

from __future__ import annotations

import json
from collections.abc import Sequence

from dagworker.store.base import StoreBase, now
from dagworker.store.records import TaskBegin, TaskFinish


class CompensationStore(StoreBase):
    """The compensation side of a task and a node (``rb_*`` fields, the compensation sets)."""

    # -- compensations ---------------------------------------------------------------------------

    def task_states(self, run_id: str, slug: str, first: int, last: int) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for i in range(first, last + 1):
            pipe.hget(self.keys.task(run_id, slug, i), "state")
        return [s or "" for s in pipe.execute()]

    def mark_compensations(
        self, run_id: str, slug: str, indices: Sequence[int], include_failed: bool
    ) -> list[tuple[int, int]]:
        """Queue the compensation of these tasks; returns ``(index, attempt)`` newly queued."""
        k = self.keys
        flat = self._scripts["mark_compensations"](
            keys=[k.run(run_id), k.node(run_id, slug), *(k.task(run_id, slug, i) for i in indices)],
            args=[now(), "1" if include_failed else "0"],
        )
        return [(indices[int(flat[j]) - 1], int(flat[j + 1])) for j in range(0, len(flat), 2)]

    def queued_compensations(
        self, run_id: str, slug: str, first: int, last: int
    ) -> list[tuple[int, int]]:
        """``(index, attempt)`` of compensations still queued (a launch being resumed)."""
        pipe = self.r.pipeline(transaction=False)
        for i in range(first, last + 1):
            pipe.hmget(self.keys.task(run_id, slug, i), "rb_state", "rb_attempt")
        return [
            (first + i, int(attempt))
            for i, (state, attempt) in enumerate(pipe.execute())
            if state == "queued"
        ]

    def finish_comp_launch(self, run_id: str, slug: str) -> bool:
        k = self.keys
        ready = self._scripts["finish_comp_launch"](
            keys=[k.node(run_id, slug), k.comp_settle(run_id), k.comp_launching(run_id)],
            args=[slug],
        )
        return bool(ready)

    def begin_compensation(
        self, run_id: str, slug: str, index: int, attempt: int, worker: str
    ) -> TaskBegin:
        k = self.keys
        verdict, spec, state = self._scripts["begin_compensation"](
            keys=[k.run(run_id), k.task(run_id, slug, index)], args=[attempt, now(), worker]
        )
        return TaskBegin(verdict, json.loads(spec) if spec else {}, state)

    def finish_compensation(
        self,
        run_id: str,
        slug: str,
        index: int,
        attempt: int,
        ok: bool,
        error: str = "",
        traceback: str = "",
    ) -> TaskFinish:
        k = self.keys
        verdict, settle = self._scripts["finish_compensation"](
            keys=[
                k.node(run_id, slug),
                k.task(run_id, slug, index),
                k.comp_settle(run_id),
                k.history(run_id, slug, index),
                k.notable(run_id, slug),
            ],
            args=[attempt, "done" if ok else "failed", now(), slug, error, traceback, index],
        )
        return TaskFinish(verdict, bool(settle))

    def comp_settle_pending(self, run_id: str) -> set[str]:
        members: set[str] = self.r.smembers(self.keys.comp_settle(run_id))
        return members

    def stale_comp_launches(self, run_id: str, older_than: float) -> list[str]:
        slugs: list[str] = self.r.zrangebyscore(
            self.keys.comp_launching(run_id), "-inf", older_than
        )
        return slugs
