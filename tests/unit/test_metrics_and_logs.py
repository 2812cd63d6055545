"""Metrics rendering (Prometheus text format) and task-tagged log records, without services."""

from __future__ import annotations

import logging

import pytest

from dagworker import logs
from dagworker.metrics import (
    ORCHESTRATION,
    QUEUE_WAIT,
    RUNS_DELETED,
    TASK_DURATION,
    Recorder,
    render,
)


class FakeRedis:
    """Just enough of redis.Redis for Recorder.flush: a pipeline of HINCRBY/HINCRBYFLOAT."""

    def __init__(self) -> None:
        self.hash: dict[str, float] = {}
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> FakeRedis:
        return self

    def hincrby(self, key: str, field: str, n: int) -> None:
        self.hash[field] = self.hash.get(field, 0) + n

    hincrbyfloat = hincrby  # type: ignore[assignment]

    def execute(self) -> None:
        self.round_trips += 1


def test_recorder_batches_observations_and_render_makes_cumulative_histograms() -> None:
    # Given three durations, a queue wait, an orchestration pass and two finished runs
    redis = FakeRedis()
    rec = Recorder()
    rec.bind(redis, "m")
    rec._pid = __import__("os").getpid()  # no flusher thread: the test flushes by hand
    for seconds in (0.003, 0.2, 7200):
        rec.task_finished("transcode", "completed", seconds, "gpu", 0.04)
    with rec.orchestrating(), rec.orchestrating():  # nested passes are one
        pass
    rec.run_finished('media "v2"', "completed")
    rec.run_finished('media "v2"', "completed")
    rec.count(RUNS_DELETED, n=3)
    rec.count(RUNS_DELETED)
    # When flushed: one round trip for everything
    assert rec.flush() > 0 and redis.round_trips == 1
    assert rec.flush() == 0 and redis.round_trips == 1
    text = render({k: str(v) for k, v in redis.hash.items()}, {"running": 2})
    lines = text.splitlines()
    # Then the page is text format 0.0.4: HELP/TYPE per family, escaped labels
    assert 'dagworker_runs_finished_total{pipeline="media \\"v2\\"",state="completed"} 2' in lines
    assert 'dagworker_runs_active{state="running"} 2' in lines
    assert "dagworker_runs_deleted_total 4" in lines
    assert 'dagworker_tasks_total{plugin="transcode",outcome="completed"} 3' in lines
    for hist in (TASK_DURATION, QUEUE_WAIT, ORCHESTRATION):
        assert f"# TYPE {hist.name} histogram" in lines
    dur = TASK_DURATION.name
    assert f'{dur}_bucket{{plugin="transcode",le="0.005"}} 1' in lines
    assert f'{dur}_bucket{{plugin="transcode",le="0.25"}} 2' in lines
    assert f'{dur}_bucket{{plugin="transcode",le="3600"}} 2' in lines
    assert f'{dur}_bucket{{plugin="transcode",le="+Inf"}} 3' in lines
    assert f'{dur}_count{{plugin="transcode"}} 3' in lines
    assert any(line.startswith(f'{dur}_sum{{plugin="transcode"}} 7200.2') for line in lines)
    assert f'{QUEUE_WAIT.name}_count{{queue="gpu"}} 3' in lines
    assert f"{ORCHESTRATION.name}_count 1" in lines
    assert text.endswith("\n")


def test_a_failed_flush_keeps_the_deltas_for_the_next_one() -> None:
    class Down(FakeRedis):
        def execute(self) -> None:
            raise ConnectionError("redis is down")

    rec = Recorder()
    rec.bind(Down(), "m")
    rec._pid = __import__("os").getpid()
    rec.run_finished("p", "failed")
    with pytest.raises(ConnectionError):
        rec.flush()
    up = FakeRedis()
    rec.bind(up, "m")
    rec.flush()
    assert up.hash == {'["runs","p","failed"]': 1}


def test_log_records_inside_a_task_carry_its_ids(caplog: pytest.LogCaptureFixture) -> None:
    logs.install()
    logger = logging.getLogger("dagworker.plugin.some_plugin")
    with caplog.at_level(logging.INFO):
        logger.info("outside")
        with logs.task_context("run-1", "video", 3, 2):
            logger.info("inside %s", "the task")
        logger.info("after")
    outside, inside, after = caplog.records
    assert outside.dagworker == "" and after.dagworker == ""  # type: ignore[attr-defined]
    assert inside.dagworker == " run=run-1 node=video task=3 attempt=2"  # type: ignore[attr-defined]
    ids = ("dagworker_run", "dagworker_node", "dagworker_task", "dagworker_attempt")
    assert tuple(getattr(inside, k) for k in ids) == ("run-1", "video", 3, 2)
    assert all(getattr(outside, k) is None for k in ids)
    # names of their own, so a plugin's extra={"node": ...} still works
    logger.info("extra", extra={"node": "mine", "run_id": "x", "attempt": 9})
    formatted = logging.Formatter(logs.LOG_FORMAT).format(inside)
    assert formatted.endswith("inside the task run=run-1 node=video task=3 attempt=2")
