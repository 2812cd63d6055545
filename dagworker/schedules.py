"""Schedules: start registered pipelines by the clock, from the ``dagworker.schedule.tick`` task.

``celery beat`` sends the tick every ``DAGWORKER_SCHEDULE_INTERVAL`` seconds and a worker runs
it. Beat holds nothing that matters: the next fire time of every schedule lives in Redis
(``Keys.schedules``), written when a pipeline version is registered, so schedules can change
while beat runs. Each fire is claimed by compare-and-set on that time, so several beats by
mistake (hence several ticks at once, on several workers) still fire every slot once. A fire is
at most once: a tick that dies between its claim and the start of the run loses that slot.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from dagworker import clock
from dagworker.catalog import Catalog
from dagworker.errors import DagworkerError, LockNotAcquired, RunNotFound
from dagworker.lock import RunLock
from dagworker.pipeline import Pipeline, Schedule
from dagworker.states import RunState
from dagworker.store import Store

log = logging.getLogger("dagworker.schedules")

#: Starts a validated run of a pipeline with an input and returns its id (``client.launch``).
Starter = Callable[[Pipeline, dict[str, Any]], str]

#: Fire decisions kept per schedule (``Keys.schedule_fires``).
FIRES_KEPT = 100
#: Due schedules handled per tick (the rest on the next one).
DUE_PER_TICK = 200


@dataclass(frozen=True)
class Fire:
    """One fire decision: the slot it was for, when it was taken, what it did."""

    name: str
    slot: float
    at: float
    action: str  # start | skip | queue | drop | error (clock.Action, plus a failed start)
    run_id: str | None = None
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as ``dagworker schedules`` shows it."""

    name: str
    version: str
    schedule: Schedule
    next_at: float
    last_run: str | None
    last_fired_at: float | None
    fires: int
    skipped: int
    queued: bool
    last_error: str | None


class Scheduler:
    """Fires due schedules of one deployment."""

    def __init__(self, store: Store, start: Starter | None = None, lock_ttl: float = 30.0) -> None:
        """``start`` is needed to fire (``tick``), not to read (``schedules``, ``fires``)."""
        self.store = store
        self.r: Any = store.r
        self.keys = store.keys
        self.catalog = Catalog(store.r, store.keys)
        self.start = start
        self.lock_ttl = lock_ttl

    def tick(self, now: float | None = None) -> list[Fire]:
        """Start the queued fires whose previous run ended, then fire every due schedule."""
        now = time.time() if now is None else now
        fires = []
        for name in sorted(self.r.smembers(self.keys.schedules_queued)):
            fire = self._locked(name, partial(self._release, name, now))
            if fire is not None:
                fires.append(fire)
        due = self.r.zrangebyscore(
            self.keys.schedules, "-inf", now, start=0, num=DUE_PER_TICK, withscores=True
        )
        for name, slot in due:
            fire = self._locked(name, partial(self._fire_due, name, float(slot), now))
            if fire is not None:
                fires.append(fire)
        return fires

    def _locked(self, name: str, step: Callable[[], Fire | None]) -> Fire | None:
        """Run ``step`` under the schedule's lock; None when another tick holds it.

        The lock keeps the decide-start-record sequence of one schedule in one tick, so a second
        tick cannot see the previous run as finished while the first is still starting the next
        one. Correctness of the slot claim does not rest on it (``_claim`` is a CAS).
        """
        lock = RunLock(self.r, self.keys.schedule_lock(name), self.lock_ttl, wait_s=0)
        try:
            lock.acquire()
        except LockNotAcquired:
            return None
        try:
            return step()
        finally:
            lock.release()

    def _claim(self, name: str, slot: float, next_at: float) -> bool:
        """Move the schedule from ``slot`` to ``next_at``; False when someone else did first."""
        with self.r.pipeline() as txn:
            while True:
                try:
                    # WATCH makes this a compare-and-set: of two ticks that read the same due
                    # slot, only the first EXEC moves it; the other sees the score changed.
                    txn.watch(self.keys.schedules)
                    if txn.zscore(self.keys.schedules, name) != slot:
                        return False
                    txn.multi()
                    txn.zadd(self.keys.schedules, {name: next_at})
                    txn.execute()
                    return True
                except redis.WatchError:
                    continue  # another schedule's claim touched the set: read again

    def _fire_due(self, name: str, slot: float, now: float) -> Fire | None:
        state = self.r.hgetall(self.keys.schedule(name))
        if not state.get("spec"):
            return None  # unscheduled since the tick read the due list
        schedule = Schedule.model_validate_json(state["spec"])
        next_at = clock.advance(schedule, float(state.get("anchor") or slot), slot, now)
        if not self._claim(name, slot, next_at):
            return None
        queued = state.get("queued") == "1"
        decision = clock.decide(schedule.overlap, self._active(state.get("last_run")), queued)
        if decision.action is clock.Action.START:
            return self._start(name, state, schedule, slot, now)
        if decision.action is clock.Action.QUEUE:
            self.r.hset(self.keys.schedule(name), mapping={"queued": "1", "queued_slot": slot})
            self.r.sadd(self.keys.schedules_queued, name)
        elif decision.action is clock.Action.SKIP:
            self.r.hincrby(self.keys.schedule(name), "skipped", 1)
        return self._record(Fire(name, slot, now, decision.action.value, None, decision.reason))

    def _release(self, name: str, now: float) -> Fire | None:
        """Start the queued fire of ``name`` once its previous run has ended."""
        state = self.r.hgetall(self.keys.schedule(name))
        if state.get("queued") != "1" or not state.get("spec"):
            self.r.srem(self.keys.schedules_queued, name)
            return None
        if self._active(state.get("last_run")):
            return None
        self.r.hset(self.keys.schedule(name), "queued", "0")
        self.r.srem(self.keys.schedules_queued, name)
        schedule = Schedule.model_validate_json(state["spec"])
        return self._start(name, state, schedule, float(state.get("queued_slot") or now), now)

    def _active(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return not RunState(self.store.run(run_id)["status"]).terminal
        except RunNotFound:
            return False  # expired (result_ttl) or deleted: certainly not running

    def _start(
        self, name: str, state: dict[str, str], schedule: Schedule, slot: float, now: float
    ) -> Fire:
        key = self.keys.schedule(name)
        if self.start is None:
            raise TypeError("Scheduler(store) without a start function can only read")
        try:
            pipeline = self.catalog.get(name, state.get("version"))
            run_id = self.start(pipeline, dict(schedule.input))
        except DagworkerError as exc:
            # Plugins may have changed since registration: the run is refused, the clock goes on.
            log.warning("schedule %s: run refused: %s", name, exc)
            self.r.hset(key, "last_error", str(exc))
            return self._record(Fire(name, slot, now, "error", None, str(exc)))
        self.r.hset(key, mapping={"last_run": run_id, "last_fired_at": now, "last_error": ""})
        self.r.hincrby(key, "fires", 1)
        return self._record(Fire(name, slot, now, clock.Action.START.value, run_id))

    def _record(self, fire: Fire) -> Fire:
        key = self.keys.schedule_fires(fire.name)
        self.r.lpush(key, fire.to_json())
        self.r.ltrim(key, 0, FIRES_KEPT - 1)
        return fire

    # -- reading -----------------------------------------------------------------------------

    def fires(self, name: str, limit: int = FIRES_KEPT) -> list[Fire]:
        """The latest fire decisions of a schedule, oldest first."""
        raw = self.r.lrange(self.keys.schedule_fires(name), 0, limit - 1)
        return [Fire(**json.loads(item)) for item in reversed(raw)]

    def schedules(self) -> list[ScheduleInfo]:
        """Every active schedule, soonest first."""
        out = []
        for name, next_at in self.r.zrange(self.keys.schedules, 0, -1, withscores=True):
            state = self.r.hgetall(self.keys.schedule(name))
            if not state.get("spec"):
                continue
            out.append(
                ScheduleInfo(
                    name=name,
                    version=state.get("version", ""),
                    schedule=Schedule.model_validate_json(state["spec"]),
                    next_at=float(next_at),
                    last_run=state.get("last_run") or None,
                    last_fired_at=float(state["last_fired_at"])
                    if state.get("last_fired_at")
                    else None,
                    fires=int(state.get("fires") or 0),
                    skipped=int(state.get("skipped") or 0),
                    queued=state.get("queued") == "1",
                    last_error=state.get("last_error") or None,
                )
            )
        return out
