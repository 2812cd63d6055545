"""Schedules, triggers and registered-pipeline identity: pure logic (no services)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dagworker.catalog import content_hash, split_ref
from dagworker.clock import MAX_CATCH_UP, Action, advance, decide, next_cron, next_every
from dagworker.errors import PipelineInvalid, PipelineNotRegistered
from dagworker.pipeline import Overlap, Pipeline, Schedule
from dagworker.plugin import Registry
from dagworker.triggers import check_event
from dagworker.validation import check, validate


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def registry() -> Registry:
    reg = Registry()

    def echo(ctx: Any) -> dict[str, Any]:
        return {}

    reg.register("echo", echo)
    return reg


def raw(**extra: Any) -> dict[str, Any]:
    return {
        "name": "p",
        "input": {"n": {"type": "integer", "required": True}},
        "nodes": [{"slug": "a", "plugin": "echo"}],
        **extra,
    }


# -- next fire ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/5 * * * *", "2024-01-01T12:04:59", "2024-01-01T12:05:00"),
        ("*/5 * * * *", "2024-01-01T12:05:00", "2024-01-01T12:10:00"),  # strictly after
        ("*/5 * * * *", "2024-01-01T12:05:30", "2024-01-01T12:10:00"),
        ("0 0 * * *", "2024-01-31T23:58:00", "2024-02-01T00:00:00"),  # month boundary
        ("30 9 * * 1", "2024-01-03T10:00:00", "2024-01-08T09:30:00"),  # next Monday
        ("0 12 29 2 *", "2024-03-01T00:00:00", "2028-02-29T12:00:00"),  # leap day
    ],
)
def test_next_cron_is_the_first_slot_strictly_after(cron: str, after: str, expected: str) -> None:
    assert next_cron(cron, ts(after)) == ts(expected)


def test_next_every_is_anchored_not_drifting() -> None:
    # Given a 60 s schedule anchored at t=1000
    # When asked at various times, Then slots stay on 1000 + k*60
    assert next_every(60, 1000, 1000) == 1060
    assert next_every(60, 1000, 1059.9) == 1060
    assert next_every(60, 1000, 1060) == 1120
    assert next_every(60, 1000, 1000 + 3600.5) == 1000 + 3660
    assert next_every(60, 1000, 900) == 1000  # before the anchor: the anchor itself


def test_without_catch_up_downtime_fires_once_then_waits_for_the_next_slot() -> None:
    # Given a 10 s schedule whose slot 1010 is due, seen at 1075 (six slots missed)
    spec = Schedule(every_s=10)
    # When it fires, Then the next slot is the first one after now, not 1020
    assert advance(spec, 1000, 1010, 1075) == 1080


def test_catch_up_fires_every_missed_slot_in_turn() -> None:
    spec = Schedule(every_s=10, catch_up=True)
    assert advance(spec, 1000, 1010, 1075) == 1020
    assert advance(spec, 1000, 1070, 1075) == 1080  # caught up
    # far behind: bounded, then it jumps to now
    far = 1000 + 10 * (MAX_CATCH_UP + 50)
    assert advance(spec, 1000, 1010, far) == next_every(10, 1000, far)


def test_catch_up_works_for_cron_too() -> None:
    spec = Schedule(cron="*/5 * * * *", catch_up=True)
    slot, now = ts("2024-01-01T12:00:00"), ts("2024-01-01T12:17:00")
    assert advance(spec, 0, slot, now) == ts("2024-01-01T12:05:00")
    assert advance(Schedule(cron="*/5 * * * *"), 0, slot, now) == ts("2024-01-01T12:20:00")


# -- overlap -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overlap", "active", "queued", "action"),
    [
        (Overlap.SKIP, False, False, Action.START),
        (Overlap.SKIP, True, False, Action.SKIP),
        (Overlap.QUEUE, False, False, Action.START),
        (Overlap.QUEUE, True, False, Action.QUEUE),
        (Overlap.QUEUE, True, True, Action.DROP),  # at most one queued
        (Overlap.ALLOW, True, False, Action.START),
        (Overlap.ALLOW, False, False, Action.START),
    ],
)
def test_overlap_decisions(overlap: Overlap, active: bool, queued: bool, action: Action) -> None:
    assert decide(overlap, active, queued).action is action


# -- model and validation ----------------------------------------------------------------------


def test_schedule_and_triggers_are_strict_and_validated() -> None:
    # Given a pipeline with a bad cron, a schedule input the schema refuses, and a typo
    pipeline = raw(
        schedule={"cron": "61 * * * *", "input": {"n": "x"}},
        triggers={"events": ["order.created"], "evnets": []},
    )
    # When it is checked, Then every problem is reported, each naming its field
    _, problems = check(pipeline, registry())
    text = "\n".join(map(str, problems))
    assert "evnets" in text and "unknown key" in text


def test_schedule_problems_name_the_field() -> None:
    _, problems = check(raw(schedule={"cron": "61 * * * *", "input": {"n": "x"}}), registry())
    text = "\n".join(map(str, problems))
    assert "schedule: field 'cron'" in text and "61" in text
    assert "schedule: field 'input'" in text and "expected integer" in text


@pytest.mark.parametrize(
    "schedule",
    [
        {},  # no clock
        {"cron": "* * * * *", "every_s": 5},  # two clocks
        {"every_s": 0.5},  # below one second
        {"every_s": 5, "overlap": "sometimes"},
        {"cron": "* * * *"},  # four fields
    ],
)
def test_invalid_schedules_are_refused(schedule: dict[str, Any]) -> None:
    with pytest.raises(PipelineInvalid):
        validate(raw(schedule={**schedule, "input": {"n": 1}}), registry())


@pytest.mark.parametrize("events", [[], ["Order"], ["a b"], ["-x"], ["ok", "ok"]])
def test_invalid_event_lists_are_refused(events: list[str]) -> None:
    with pytest.raises(PipelineInvalid):
        validate(raw(triggers={"events": events}), registry())


def test_valid_schedule_and_triggers_round_trip_through_json() -> None:
    pipeline = validate(
        raw(
            schedule={"every_s": 60, "input": {"n": 1}, "overlap": "queue"},
            triggers={"events": ["order.created", "nightly"]},
        ),
        registry(),
    )
    again = Pipeline.model_validate_json(pipeline.to_json())
    assert again == pipeline
    assert again.schedule is not None and again.schedule.overlap is Overlap.QUEUE


def test_check_event() -> None:
    assert check_event("order.created") == "order.created"
    with pytest.raises(PipelineInvalid, match="lower-case"):
        check_event("Order Created")


# -- registered-pipeline identity ---------------------------------------------------------------


def test_content_hash_ignores_version_and_key_order() -> None:
    a = Pipeline.model_validate({**raw(), "version": 1})
    b = Pipeline.model_validate({"nodes": raw()["nodes"], "input": raw()["input"], "name": "p"})
    c = Pipeline.model_validate(raw(description="changed"))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)


def test_split_ref() -> None:
    assert split_ref("ingest") == ("ingest", None)
    assert split_ref("ingest@3") == ("ingest", "3")
    assert split_ref("ingest", 3) == ("ingest", "3")
    assert split_ref("ingest@3", "3") == ("ingest", "3")
    with pytest.raises(PipelineNotRegistered):
        split_ref("ingest@3", 4)
    with pytest.raises(PipelineNotRegistered):
        split_ref("ingest@")
