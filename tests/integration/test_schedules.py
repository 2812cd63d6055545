"""Schedules through a real ``celery -A dagworker beat`` and real workers (issue 8, part 3)."""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from dagworker.catalog import Catalog
from dagworker.cli import main
from dagworker.client import Client, launch
from dagworker.pipeline import Pipeline
from dagworker.schedules import Fire, Scheduler
from tests.conftest import Deployment, service, wait_for

WAIT = 120


def scheduled(name: str, node: dict[str, Any], **schedule: Any) -> dict[str, Any]:
    return {"name": name, "nodes": [{"slug": "a", **node}], "schedule": schedule}


@contextmanager
def beat(deployment: Deployment, tag: str) -> Iterator[Path]:
    """A ``celery -A dagworker beat`` subprocess (own process group), stopped by pid."""
    log_path = deployment.tmp / f"beat-{tag}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "dagworker",
        "beat",
        "--schedule",
        str(deployment.tmp / f"beat-{tag}.db"),
        "--loglevel=INFO",
    ]
    with service(cmd, deployment.env(), log_path):
        yield log_path


def ticks_sent(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count("Sending due task dagworker-schedules")


def unschedule(client: Client, p: dict[str, Any]) -> None:
    """Register a version without the schedule: firing stops at once, deterministically."""
    client.register({k: v for k, v in p.items() if k != "schedule"})


def starts(fires: list[Fire]) -> list[Fire]:
    return [f for f in fires if f.action == "start"]


def test_beat_fires_a_one_second_schedule_and_skip_blocks_overlaps(isolated: Deployment) -> None:
    # Given two workers and a registered pipeline that takes longer than its 1 s interval
    for _ in range(2):
        isolated.start_worker(wait=False)
    for worker in isolated.workers:
        worker.wait_ready()
    client = isolated.client()
    name = "slow-every-second"
    p = scheduled(name, {"plugin": "t_sleep", "config": {"seconds": 2.5}}, every_s=1)
    client.register(p)
    scheduler = Scheduler(client.store)
    # When beat runs until the schedule has started twice and skipped at least once
    with beat(isolated, "one") as log_path:
        wait_for(
            lambda: (
                len(starts(scheduler.fires(name))) >= 2
                and any(f.action == "skip" for f in scheduler.fires(name))
            ),
            timeout=WAIT,
        )
        unschedule(client, p)
    assert ticks_sent(log_path) >= 2
    assert "Logging error" not in log_path.read_text(errors="replace")  # beat's log format
    fires = scheduler.fires(name)
    runs = {s.run_id: s for s in client.runs(limit=100) if s.pipeline == name}
    # Then every start made exactly one run, and the slow runs never overlapped
    assert sorted(runs) == sorted(f.run_id for f in starts(fires))
    for run in runs:
        client.get(run).wait(WAIT)
    done = sorted((client.get(r).status() for r in runs), key=lambda s: s.created_at)
    for before, after in pairwise(done):
        assert before.finished_at is not None and after.created_at >= before.finished_at
    # And every skip happened while the run started before it was still going
    for skip in (f for f in fires if f.action == "skip"):
        previous = max((f for f in starts(fires) if f.at <= skip.at), key=lambda f: f.at)
        finished = client.get(str(previous.run_id)).status().finished_at
        assert finished is None or finished > skip.at
    # And fires are on time: within a tick (plus queueing) of their slot
    lateness = [f.at - f.slot for f in fires]
    assert all(0 <= late < 3.0 for late in lateness), lateness
    mean = sum(lateness) / len(lateness)
    print(f"\nschedule lateness s: max {max(lateness):.3f} mean {mean:.3f}")


def test_two_beats_do_not_double_fire(isolated: Deployment) -> None:
    # Given two workers, a quick pipeline every second with overlap allow, and TWO beats
    for _ in range(2):
        isolated.start_worker(wait=False)
    for worker in isolated.workers:
        worker.wait_ready()
    client = isolated.client()
    name = "twice-beaten"
    p = scheduled(name, {"plugin": "t_echo_input"}, every_s=1, overlap="allow")
    client.register(p)
    scheduler = Scheduler(client.store)
    with beat(isolated, "a") as log_a, beat(isolated, "b") as log_b:
        # When both have sent several ticks and the schedule has fired a few times
        wait_for(
            lambda: (
                ticks_sent(log_a) >= 4
                and ticks_sent(log_b) >= 4
                and len(starts(scheduler.fires(name))) >= 4
            ),
            timeout=WAIT,
        )
        unschedule(client, p)
        sent = ticks_sent(log_a) + ticks_sent(log_b)
    fired = starts(scheduler.fires(name))
    slots = [f.slot for f in fired]
    # Then each slot fired once, each fire is one run, and slots are a second apart
    assert len(slots) == len(set(slots))
    assert all(b - a > 0.999 for a, b in pairwise(slots)), slots
    runs = [s.run_id for s in client.runs(limit=100) if s.pipeline == name]
    assert sorted(runs) == sorted(str(f.run_id) for f in fired)
    # And far fewer runs than ticks: the second beat's ticks found the slots claimed
    assert len(fired) < sent


def test_concurrent_ticks_claim_a_due_slot_once(isolated: Deployment) -> None:
    # Given a due schedule and eight ticks racing for it (no lock between them: each has its
    # own Scheduler, as on eight workers)
    client = isolated.client()
    name = "raced"
    client.register(scheduled(name, {"plugin": "t_echo_input"}, every_s=60, overlap="allow"))
    keys = client.store.keys
    due = client.store.r.zscore(keys.schedules, name) - 120
    client.store.r.zadd(keys.schedules, {name: due})
    calls: list[str] = []
    barrier = threading.Barrier(8)

    def start(pipeline: Pipeline, run_input: dict[str, Any]) -> str:
        calls.append(pipeline.name)
        return f"fake-{secrets.token_hex(4)}"

    def race() -> None:
        sched = Scheduler(client.store, start)
        barrier.wait()
        sched.tick()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then exactly one started a run, and the schedule moved to its next slot
    assert calls == [name]
    assert client.store.r.zscore(keys.schedules, name) > due
    # And the claim itself is a compare-and-set, lock or not: a stale slot cannot be claimed
    sched = Scheduler(client.store, start)
    assert not sched._claim(name, due, due + 60)


def test_overlap_queue_starts_one_waiting_fire_when_the_run_ends(fleet: Deployment) -> None:
    # Given a registered slow pipeline with overlap queue, ticked by hand with chosen times
    client = fleet.client()
    name = f"queued-{secrets.token_hex(3)}"
    spec = scheduled(
        name, {"plugin": "t_sleep", "config": {"seconds": 1.5}}, every_s=10, overlap="queue"
    )
    client.register(spec)
    orch = client.orchestrator
    sched = Scheduler(client.store, lambda p, i: launch(orch, client.registry, p, i))
    first_slot = client.store.r.zscore(client.store.keys.schedules, name)

    def tick(at: float) -> list[str]:
        return [f.action for f in sched.tick(at) if f.name == name]

    # When three slots come while the first run is still going
    assert tick(first_slot) == ["start"]
    assert tick(first_slot + 10) == ["queue"]
    assert tick(first_slot + 20) == ["drop"]  # at most one queued
    first = client.get(str(sched.fires(name)[0].run_id))
    assert tick(first_slot + 20.5) == []  # still running: the queued fire waits
    # Then the queued fire starts once the first run has ended, and only once
    first.wait(WAIT)
    assert tick(first_slot + 25) == ["start"]
    assert tick(first_slot + 26) == []
    second = client.get(str(sched.fires(name)[-1].run_id))
    assert second.id != first.id and second.wait(WAIT).status == "completed"
    assert second.status().created_at >= first.status().finished_at  # type: ignore[operator]
    unschedule(client, spec)


def test_downtime_without_catch_up_fires_once(fleet: Deployment) -> None:
    client = fleet.client()
    name = f"downtime-{secrets.token_hex(3)}"
    spec = scheduled(name, {"plugin": "t_echo_input"}, every_s=10, overlap="allow")
    client.register(spec)
    started: list[str] = []
    sched = Scheduler(client.store, lambda p, i: started.append(p.name) or "fake-run")
    keys = client.store.keys
    slot = client.store.r.zscore(keys.schedules, name)
    # When the tick comes back 65 s after the slot (six more slots missed)
    sched.tick(slot + 65)
    sched.tick(slot + 66)
    # Then one fire, and the next slot is the first one after now
    assert started == [name]
    assert client.store.r.zscore(keys.schedules, name) == slot + 70
    # And the listing shows it with its next fire time
    (info,) = [s for s in Scheduler(client.store).schedules() if s.name == name]
    assert info.next_at == slot + 70 and info.fires == 1
    out = CliRunner().invoke(main, ["schedules", "--json"], env=fleet.env())
    (row,) = [r for r in json.loads(out.output) if r["name"] == name]
    assert row["next_at"] == slot + 70 and row["schedule"]["every_s"] == 10
    text = CliRunner().invoke(main, ["schedules"], env=fleet.env()).output
    assert f"{name}@1" in text and "every 10s" in text and "fires 1" in text
    unschedule(client, spec)
    assert Catalog(client.store.r, keys).entry(name).scheduled is False
