"""When a schedule fires and what its overlap policy does: pure logic, unit-tested alone.

Cron text is parsed by ``celery.schedules.crontab`` (no app, no broker: it is plain date
arithmetic), so dagworker carries no cron parser of its own. Every time here is a POSIX
timestamp in seconds; cron fields are read in UTC, like the Celery app (``enable_utc``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from dagworker.pipeline import Overlap, Schedule

#: A schedule behind by more missed slots than this (catch_up) fires this many, then jumps.
MAX_CATCH_UP = 100


def crontab_of(text: str) -> Any:
    """The ``celery.schedules.crontab`` of five-field cron text; ValueError naming the problem."""
    from celery.schedules import crontab

    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron {text!r} has {len(fields)} field(s); write five: "
            "minute hour day-of-month month day-of-week"
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        # by keyword: crontab's positional order (minute, hour, day_of_week, ...) is not cron's
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"cron {text!r}: {exc}") from exc


def cron_problem(text: str) -> str | None:
    """Why ``text`` is not a valid cron expression, or None."""
    try:
        crontab_of(text)
    except ValueError as exc:
        return str(exc)
    return None


def next_cron(text: str, after: float) -> float:
    """The first cron slot strictly after ``after`` (whole minutes, UTC)."""
    start, delta, _ = crontab_of(text).remaining_delta(datetime.fromtimestamp(after, UTC), tz="UTC")
    slot: datetime = start + delta
    return slot.timestamp()


def next_every(every_s: float, anchor: float, after: float) -> float:
    """The first slot ``anchor + k * every_s`` strictly after ``after`` (k >= 1 past anchor)."""
    if after < anchor:
        return anchor
    k = math.floor((after - anchor) / every_s) + 1
    return anchor + k * every_s


def next_fire(schedule: Schedule, anchor: float, after: float) -> float:
    """The first slot of ``schedule`` strictly after ``after``; ``anchor`` paces ``every_s``."""
    if schedule.cron is not None:
        return next_cron(schedule.cron, after)
    assert schedule.every_s is not None  # the model requires exactly one clock
    return next_every(schedule.every_s, anchor, after)


def advance(schedule: Schedule, anchor: float, slot: float, now: float) -> float:
    """The next slot to wait for once the due ``slot`` has fired at ``now``.

    Without ``catch_up`` a schedule that was down fires once and then waits for the first slot
    after now; with it, every missed slot fires in turn (at most MAX_CATCH_UP, then it jumps).
    """
    if not schedule.catch_up:
        return next_fire(schedule, anchor, now)
    following = next_fire(schedule, anchor, slot)
    if following > now:
        return following
    if schedule.every_s is not None and (now - following) / schedule.every_s > MAX_CATCH_UP:
        return next_fire(schedule, anchor, now)
    return following


class Action(str, Enum):
    """What one due fire of a schedule does."""

    START = "start"
    SKIP = "skip"  # overlap skip: the previous run is still active
    QUEUE = "queue"  # overlap queue: start when the previous run ends
    DROP = "drop"  # overlap queue: one fire is already waiting (at most one is queued)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def decide(overlap: Overlap, previous_active: bool, queued: bool) -> Decision:
    """Overlap policy for a due fire, given the schedule's previous run and its queue."""
    if not previous_active or overlap is Overlap.ALLOW:
        return Decision(Action.START, "no active run" if not previous_active else "overlap allow")
    if overlap is Overlap.SKIP:
        return Decision(Action.SKIP, "previous run still active")
    if queued:
        return Decision(Action.DROP, "previous run still active and one fire already queued")
    return Decision(Action.QUEUE, "previous run still active; starts when it ends")
