"""Chaos: many concurrent runs of mixed shapes while workers are SIGKILLed at random (`make chaos`).

Four solo workers, a short visibility timeout and a fast reconciler. A killer thread SIGKILLs a
random ready worker every few seconds and starts a replacement. Then every run must complete
with exactly its planned tasks, its outputs intact, and no plugin completion beyond what the
kills explain (a delivery on a killed worker is redone elsewhere: a *redelivery*).

Knobs: DAGWORKER_CHAOS_RUNS (default 60), DAGWORKER_CHAOS_KILLS (default 15),
DAGWORKER_CHAOS_SEED (default: random, printed so a failure can be replayed),
DAGWORKER_CHAOS_STEP (seconds a task works, 0.3) and DAGWORKER_CHAOS_VISIBILITY (the
visibility timeout, 4 s; set it below the step to watch the suite catch the duplicates).
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dagworker import Client
from dagworker.states import RunState
from tests.conftest import CRASH_SETTINGS, Deployment, WorkerProcess, deployment

pytestmark = pytest.mark.chaos

RUNS = int(os.environ.get("DAGWORKER_CHAOS_RUNS", "60"))
MAX_KILLS = int(os.environ.get("DAGWORKER_CHAOS_KILLS", "15"))
SEED = int(os.environ.get("DAGWORKER_CHAOS_SEED", str(secrets.randbits(32))))
WORKERS = 4
DEADLINE_S = 300.0
#: Seconds a task works: long enough that most kills land inside a plugin.
STEP = float(os.environ.get("DAGWORKER_CHAOS_STEP", "0.3"))
VISIBILITY_S = float(os.environ.get("DAGWORKER_CHAOS_VISIBILITY", "4"))


def _n(slug: str, plugin: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"slug": slug, "plugin": plugin, "depends_on": list(deps), **extra}


def _cfg(**config: Any) -> dict[str, Any]:
    return {"seconds": STEP, **config}


#: shape -> (pipeline, tasks per node, final node, its expected outputs)
SHAPES: dict[str, tuple[dict[str, Any], dict[str, int], str, list[dict[str, Any]]]] = {
    "chain": (
        {
            "name": "chaos-chain",
            "nodes": [
                _n("a", "t_chaos_emit", config=_cfg(n=1)),
                _n("b", "t_chaos_step", "a", config=_cfg()),
                _n("c", "t_chaos_step", "b", config=_cfg()),
                _n("d", "t_chaos_step", "c", config=_cfg()),
            ],
        },
        {"a": 1, "b": 1, "c": 1, "d": 1},
        "d",
        [{"item": 0, "path": ["a", "b", "c", "d"]}],
    ),
    "fan": (
        {
            "name": "chaos-fan",
            "nodes": [
                _n("src", "t_chaos_emit", config=_cfg(n=6)),
                _n("each", "t_chaos_step", "src", config=_cfg()),
                _n("agg", "t_chaos_gather", "each", fan_mode="aggregate", config=_cfg()),
            ],
        },
        {"src": 1, "each": 6, "agg": 1},
        "agg",
        [{"count": 6, "items": [0, 1, 2, 3, 4, 5], "per_dep": {"each": 6}, "origin": None}],
    ),
    "diamond": (
        {
            "name": "chaos-diamond",
            "nodes": [
                _n("a", "t_chaos_emit", config=_cfg(n=1)),
                _n("b", "t_chaos_step", "a", config=_cfg()),
                _n("c", "t_chaos_step", "a", config=_cfg()),
                _n("d", "t_chaos_gather", "b", "c", fan_mode="aggregate", config=_cfg()),
            ],
        },
        {"a": 1, "b": 1, "c": 1, "d": 1},
        "d",
        [{"count": 2, "items": [0, 0], "per_dep": {"b": 1, "c": 1}, "origin": None}],
    ),
    "scatter": (
        {
            "name": "chaos-scatter",
            "nodes": [
                _n("split", "t_chaos_emit", config=_cfg(n=4)),
                _n("x", "t_chaos_step", "split", config=_cfg()),
                _n("y", "t_chaos_step", "split", config=_cfg()),
                _n("merge", "t_chaos_gather", "x", "y", fan_mode="grouped", config=_cfg()),
            ],
        },
        {"split": 1, "x": 4, "y": 4, "merge": 4},
        "merge",
        [
            {"count": 2, "items": [k, k], "per_dep": {"x": 1, "y": 1}, "origin": f"split:0:{k}"}
            for k in range(4)
        ],
    ),
    "retry": (
        {
            "name": "chaos-retry",
            "nodes": [
                _n("src", "t_chaos_emit", config=_cfg(n=1)),
                _n(
                    "flaky",
                    "t_chaos_step",
                    "src",
                    config=_cfg(fail_first=True),
                    retry={"max_attempts": 3, "backoff_s": 0.2, "jitter": False},
                ),
                _n("after", "t_chaos_step", "flaky", config=_cfg()),
            ],
        },
        {"src": 1, "flaky": 1, "after": 1},
        "after",
        [{"item": 0, "path": ["src", "flaky", "after"]}],
    ),
}


@dataclass
class Kill:
    at: float
    pid: int
    worker: str


@dataclass
class Killer:
    """SIGKILLs a random ready worker every 1.5-4 s and starts a replacement."""

    d: Deployment
    rng: random.Random
    kills: list[Kill] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def ready(self) -> list[WorkerProcess]:
        return [
            w
            for w in self.d.workers
            if w.proc.poll() is None and self.d.redis.hexists(w.workers_key, w.name)
        ]

    def run(self) -> None:
        # The pauses are the chaos schedule itself (random kill times), not a wait for an event.
        while len(self.kills) < MAX_KILLS and not self.stop.wait(self.rng.uniform(1.5, 4.0)):
            candidates = self.ready()
            if len(candidates) < 2:  # keep the fleet alive while replacements start
                continue
            victim = self.rng.choice(candidates)
            self.kills.append(Kill(time.time(), victim.proc.pid, victim.name))
            victim.kill()
            self.d.start_worker(wait=False)


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Deployment]:
    with deployment(tmp_path, **{**CRASH_SETTINGS, "visibility_timeout": VISIBILITY_S}) as d:
        yield d


def _wait_all(client: Client, run_ids: list[str], deadline: float) -> dict[str, str]:
    """Poll until every run is terminal or the deadline passes; returns run -> status."""
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {rid: client.store.run(rid)["status"] for rid in run_ids}
        if all(RunState(s).terminal for s in states.values()):
            break
        time.sleep(0.2)
    return states


@dataclass
class Figures:
    redeliveries: int = 0
    resent: int = 0
    unexplained: list[str] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _check_run(
    d: Deployment, client: Client, run_id: str, shape: str, killed: set[int], fig: Figures
) -> list[dict[str, Any]]:
    """Counts, outputs and deliveries of one finished run; returns its call records."""
    _, plan, final, expected = SHAPES[shape]
    status = client.store.run(run_id)
    where = f"run {run_id} ({shape})"
    if status["status"] != "completed":
        fig.problems.append(f"{where}: {status['status']} {status.get('error', '')}")
        return []
    nodes = {s: client.store.r.hgetall(client.store.keys.node(run_id, s)) for s in plan}
    tasks = {s: int(v.get("tasks", 0)) for s, v in nodes.items()}
    if tasks != plan:
        fig.problems.append(f"{where}: tasks per node {tasks}, planned {plan}")
    if (
        int(status["tasks_total"]) != sum(plan.values())
        or status["tasks_done"] != status["tasks_total"]
    ):
        fig.problems.append(
            f"{where}: tasks_total/done {status['tasks_total']}/{status['tasks_done']}"
        )
    outputs = [a.fields for a in client.store.iter_artifacts(run_id, final)]
    if sorted(outputs, key=repr) != sorted(expected, key=repr):
        fig.problems.append(f"{where}: {final} produced {outputs}")
    calls = d.calls(run_id)
    per_attempt: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        per_attempt[(c["node"], c["task"], c["attempt"])].append(c)
    for (node, task, attempt), records in per_attempt.items():
        # Solo workers run one delivery at a time: a delivery is (attempt, pid).
        starts = Counter(c["pid"] for c in records if c["phase"] == "start")
        closed = Counter(c["pid"] for c in records if c["phase"] != "start")
        ends = Counter(c["pid"] for c in records if c["phase"] == "end")
        # Redone elsewhere: a delivery a kill interrupted mid-plugin, or one killed after its
        # plugin returned but before the outcome was recorded (its plugin then ran again).
        interrupted = sum(n - closed[pid] for pid, n in starts.items() if pid in killed)
        fig.redeliveries += interrupted + max(0, sum(ends.values()) - 1)
        resent = int(client.store.task(run_id, node, task).get("republished", 0))
        fig.resent += resent
        # A message the reconciler resent (a stalled run) may be the second copy of one that was
        # only slow: then two live deliveries are expected, one per copy.
        if sum(n for pid, n in starts.items() if pid not in killed) > 1 + resent:
            fig.unexplained.append(f"{where} {node}:{task} attempt {attempt}: run twice {records}")
        if max(0, sum(ends.values()) - 1) > resent + sum(
            n for pid, n in ends.items() if pid in killed
        ):
            fig.unexplained.append(f"{where} {node}:{task} attempt {attempt}: completed twice")
    for node, n in plan.items():
        finished = {c["task"] for c in calls if c["node"] == node and c["phase"] == "end"}
        if finished != set(range(n)):
            fig.problems.append(f"{where}: {node} completed tasks {sorted(finished)}, planned {n}")
    return calls


def _recoveries(kills: list[Kill], calls: list[dict[str, Any]]) -> list[float]:
    """Per kill that interrupted a plugin: seconds until that task completed on another worker."""
    out = []
    for kill in kills:
        mine = [c for c in calls if c["pid"] == kill.pid and c["at"] <= kill.at]
        for start in (c for c in mine if c["phase"] == "start"):
            key = (start["run"], start["node"], start["task"])
            closed = any(
                c["phase"] != "start" and (c["run"], c["node"], c["task"]) == key for c in mine
            )
            if closed:
                continue
            done = [
                c["at"]
                for c in calls
                if c["phase"] == "end"
                and (c["run"], c["node"], c["task"]) == key
                and c["pid"] != kill.pid
            ]
            if done:
                out.append(min(done) - kill.at)
    return out


def test_runs_survive_random_worker_kills(chaos: Deployment) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    print(f"\nchaos: seed {SEED}, {RUNS} runs, up to {MAX_KILLS} kills, {WORKERS} workers")
    # Given four workers and many concurrent runs of every shape
    for _ in range(WORKERS):
        chaos.start_worker(wait=False)
    for w in list(chaos.workers):
        w.wait_ready()
    client = chaos.client()
    shapes = [list(SHAPES)[i % len(SHAPES)] for i in range(RUNS)]
    rng.shuffle(shapes)
    runs = {client.submit(SHAPES[shape][0]).id: shape for shape in shapes}
    # When workers are SIGKILLed at random times (and replaced) until every run is done
    killer = Killer(chaos, rng)
    thread = threading.Thread(target=killer.run, name="chaos-killer", daemon=True)
    thread.start()
    states = _wait_all(client, list(runs), time.monotonic() + DEADLINE_S)
    killer.stop.set()
    thread.join(30)
    # Then every run completed exactly as planned, and every extra delivery is a redelivery
    killed = {k.pid for k in killer.kills}
    fig = Figures()
    all_calls = []
    for run_id, shape in runs.items():
        for c in _check_run(chaos, client, run_id, shape, killed, fig):
            all_calls.append({**c, "run": run_id})
    fig.recoveries = _recoveries(killer.kills, all_calls)
    completed = sum(1 for s in states.values() if s == "completed")
    stuck = [rid for rid, s in states.items() if not RunState(s).terminal]
    lost = sum(
        1
        for run_id, shape in runs.items()
        for node, n in SHAPES[shape][1].items()
        for i in range(n)
        if client.store.task(run_id, node, i).get("state") != "completed"
    )
    worst = max(fig.recoveries, default=0.0)
    print(
        f"chaos: runs completed {completed}/{len(runs)}, stuck {len(stuck)}, "
        f"kills {len(killer.kills)}, lost tasks {lost}, "
        f"extra task launches {len(fig.unexplained)}, redeliveries {fig.redeliveries}, "
        f"messages resent by the reconciler {fig.resent}, "
        f"kills that interrupted a plugin {len(fig.recoveries)}, "
        f"worst recovery {worst:.2f}s (kill -> task completed elsewhere), "
        f"duration {time.monotonic() - began:.1f}s"
    )
    assert not stuck, f"runs stuck after {DEADLINE_S:.0f}s: {stuck}"
    assert completed == len(runs), fig.problems
    assert not fig.problems, fig.problems
    assert lost == 0
    assert not fig.unexplained, fig.unexplained
    # The suite proves nothing unless the chaos hit: kills happened and some interrupted work
    assert len(killer.kills) >= 3, "too few kills: the runs finished before the chaos started"
    assert fig.redeliveries >= 1 and fig.recoveries
    # Recovery of a plugin killed mid-run: visibility timeout + kombu's restore sweep + the task
    assert worst < chaos.settings.visibility_timeout + 30, fig.recoveries
