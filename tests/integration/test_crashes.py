"""Crash safety with real worker subprocesses killed by SIGKILL (DESIGN §6).

Each test uses its own deployment (key prefix) with a short visibility timeout, so a message
whose worker died is redelivered within seconds, and a fast reconciler.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from dagworker.orchestrator import Orchestrator
from dagworker.plugin import registry
from dagworker.tasks import CeleryPublisher
from dagworker.worker import create_app
from tests.conftest import Deployment, make_deployment, wait_for

WAIT = 90


FAN = {
    "name": "fan",
    "nodes": [
        {"slug": "src", "plugin": "t_emit", "config": {"n": 3}},
        {"slug": "each", "plugin": "t_sleep", "depends_on": ["src"], "config": {"seconds": 1.0}},
        {
            "slug": "total",
            "plugin": "t_sum",
            "depends_on": ["each"],
            "fan_mode": "aggregate",
            "config": {"key": "slept"},
        },
    ],
}


def assert_launched_once(d: Deployment, run_id: str, status: Any) -> None:
    """Every node's task count matches the plan and no successor ran twice to completion."""
    completed = Counter(
        (c["node"], c["task"]) for c in d.calls(run_id) if c.get("phase", "end") == "end"
    )
    assert max(completed.values()) == 1, completed


def test_worker_killed_while_plugin_runs(crashy: Deployment) -> None:
    # Given one worker running a fan-out of sleeping tasks
    victim = crashy.start_worker()
    client = crashy.client()
    handle = client.submit(FAN)
    wait_for(lambda: any(c.get("phase") == "start" for c in crashy.calls(handle.id)))
    # When that worker is SIGKILLed mid-plugin and another one takes over
    victim.kill()
    crashy.start_worker()
    status = handle.wait(WAIT)
    # Then the task is redelivered, the run completes, and nothing is launched twice
    assert status.status == "completed", status.error
    assert status.nodes["each"].tasks == 3 and status.nodes["total"].tasks == 1
    starts = Counter(
        c["task"]
        for c in crashy.calls(handle.id)
        if c["node"] == "each" and c.get("phase") == "start"
    )
    assert max(starts.values()) == 2  # the killed attempt ran again
    assert handle.outputs("total") == [{"count": 3, "sum": 3.0, "per_dep": {"each": 3}}]
    assert_launched_once(crashy, handle.id, status)


CHAIN = {
    "name": "chain",
    "nodes": [
        {"slug": "a", "plugin": "t_append"},
        {"slug": "b", "plugin": "t_append", "depends_on": ["a"]},
        {"slug": "c", "plugin": "t_append", "depends_on": ["b"]},
    ],
}


@pytest.mark.parametrize("handoff", ["1", "0"], ids=["handoff", "orchestrator"])
def test_worker_killed_after_plugin_returned_before_orchestration(
    crashy: Deployment, handoff: str
) -> None:
    # Given a worker that dies right after recording a's outcome
    victim = crashy.start_worker(DAGWORKER_FAULTS="after_finish:a", DAGWORKER_HANDOFF=handoff)
    client = crashy.client()
    handle = client.submit(CHAIN)
    victim.proc.wait(timeout=WAIT)
    assert client.store.task(handle.id, "a", 0)["state"] == "completed"
    if handoff == "1":
        # b was launched in the same script that recorded a: queued, its message sent
        assert client.store.nodes(handle.id)["b"] == "running"
        assert client.store.task(handle.id, "b", 0)["state"] == "queued"
        assert crashy.queue_length() == 1
    else:
        # a is waiting to be settled, b was never launched
        assert client.store.nodes(handle.id)["b"] == "pending"
        assert client.store.settle_pending(handle.id) == {"a"}
    # When a healthy worker comes up
    crashy.start_worker()
    status = handle.wait(WAIT)
    # Then b and c run exactly once and a is not run again
    assert status.status == "completed", status.error
    assert Counter(c["node"] for c in crashy.calls(handle.id)) == {"a": 1, "b": 1, "c": 1}
    assert handle.outputs("c") == [{"path": ["a", "b", "c"], "origin_seen": "a:0:0"}]
    assert int(client.store.run(handle.id)["tasks_total"]) == 3


def test_worker_killed_after_its_completion_launched_a_join(crashy: Deployment) -> None:
    # Given one worker running a join's two dependencies one after the other (queued in that
    # order with the run), which dies right after recording the second
    victim = crashy.start_worker(DAGWORKER_FAULTS="after_finish:r2")
    client = crashy.client()
    handle = client.submit(
        {
            "name": "join",
            "nodes": [
                {"slug": "r1", "plugin": "t_append"},
                {"slug": "r2", "plugin": "t_append"},
                {
                    "slug": "j",
                    "plugin": "t_join",
                    "depends_on": ["r1", "r2"],
                    "fan_mode": "aggregate",
                },
            ],
        }
    )
    victim.proc.wait(timeout=WAIT)
    # Then j was claimed, created and sent in the script that recorded r2
    assert client.store.nodes(handle.id) == {
        "r1": "completed",
        "r1:wait": "0",
        "r2": "completed",
        "r2:wait": "0",
        "j": "running",
        "j:wait": "0",
    }
    assert client.store.task(handle.id, "j", 0)["state"] == "queued"
    assert crashy.queue_length() == 1
    # When a healthy worker comes up, j runs once with both inputs and ends the run
    crashy.start_worker()
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert Counter(c["node"] for c in crashy.calls(handle.id)) == {"r1": 1, "r2": 1, "j": 1}
    assert handle.outputs("j") == [{"seen": ["r1", "r2"]}]
    assert int(client.store.run(handle.id)["handoffs"]) == 3


def test_lost_publish_is_repaired_by_the_reconciler(crashy: Deployment) -> None:
    # Given a healthy worker already up, and a victim (the only one on a's queue) that dies
    # after persisting b's task but before sending its message
    healthy = crashy.start_worker()
    other_name = crashy.settings.redis_url.replace("127.0.0.1", "localhost")
    assert other_name != crashy.settings.redis_url, "the test Redis must be on 127.0.0.1"
    victim = crashy.start_worker(
        queues=f"only-a,{crashy.settings.default_queue}",
        DAGWORKER_FAULTS="before_publish:b",
        # The same Redis named differently: the victim treats the broker as another server, so
        # it records b's batch in the outbox and publishes after (with the broker on the run
        # store, the message is pushed by the script that creates b's task: no window).
        DAGWORKER_BROKER_URL=other_name,
    )
    client = crashy.client()
    chain = {
        "name": "chain",
        "nodes": [{**CHAIN["nodes"][0], "queue": "only-a"}, *CHAIN["nodes"][1:]],
    }
    handle = client.submit(chain)
    assert victim.proc.wait(timeout=WAIT) == -9  # the fault fired: b persisted, never sent
    # When the healthy worker's reconciler finds the outbox entry (every 0.5 s, grace 1 s)
    status = handle.wait(WAIT)
    # Then b was republished once, ran once, and the run completed with nothing launched twice
    assert status.status == "completed", status.error
    calls = crashy.calls(handle.id)
    assert Counter(c["node"] for c in calls) == {"a": 1, "b": 1, "c": 1}
    assert {s: n.tasks for s, n in status.nodes.items()} == {"a": 1, "b": 1, "c": 1}
    assert int(client.store.run(handle.id)["tasks_total"]) == 3
    assert int(client.store.task(handle.id, "b", 0)["deliveries"]) == 1
    assert client.store.r.zcard(client.store.keys.outbox(handle.id)) == 0
    # The crash came right after b's task was persisted (queued_at); the repair time runs
    # from there to the republished task starting on the healthy worker
    crashed_at = float(client.store.task(handle.id, "b", 0)["queued_at"])
    b_call = next(c for c in calls if c["node"] == "b")
    repaired_after = b_call["at"] - crashed_at
    print(
        f"lost publish repaired {repaired_after:.2f}s after the crash "
        f"(grace {crashy.settings.publish_grace}s, interval {crashy.settings.reconcile_interval}s)"
    )
    assert b_call["pid"] == healthy.proc.pid
    # Not before the grace period (a slow publisher is not raced), and within about
    # grace + interval (slack for a loaded CI machine)
    settings = crashy.settings
    assert (
        settings.publish_grace
        <= repaired_after
        < settings.publish_grace + settings.reconcile_interval + 10
    )


def test_message_lost_by_the_broker_is_resent_by_the_reconciler(crashy: Deployment) -> None:
    # Given a run whose first task's message vanished from the broker after it was confirmed
    # sent (kombu's Redis transport loses a message exactly so when a worker is killed between
    # popping it and recording it as unacknowledged)
    client = crashy.client()
    handle = client.submit(CHAIN)
    assert crashy.redis.delete(f"{crashy.prefix}:kombu:{crashy.settings.default_queue}") == 1
    assert client.store.r.zcard(client.store.keys.outbox(handle.id)) == 0
    # When a worker comes up: its reconciler sees the run make no progress
    started = time.time()
    crashy.start_worker()
    status = handle.wait(WAIT)
    # Then a was resent once, after the run stalled for visibility timeout + grace, and the
    # run completed with every task run once
    assert status.status == "completed", status.error
    calls = crashy.calls(handle.id)
    assert Counter(c["node"] for c in calls) == {"a": 1, "b": 1, "c": 1}
    assert client.store.task(handle.id, "a", 0)["republished"] == "1"
    settings = crashy.settings
    assert calls[0]["at"] - started >= settings.visibility_timeout + settings.publish_grace


def test_duplicate_delivery_of_a_running_task(crashy: Deployment) -> None:
    # Given a task that runs longer than the visibility timeout (3 s), and two workers
    crashy.start_worker()
    crashy.start_worker()
    client = crashy.client()
    p = {
        "name": "slow",
        "nodes": [
            {"slug": "slow", "plugin": "t_sleep", "config": {"seconds": 5.0}},
            {"slug": "next", "plugin": "t_append", "depends_on": ["slow"]},
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then the message was delivered twice and both copies ran, but the outcome was
    # recorded once and the successor launched once
    assert status.status == "completed", status.error
    calls = crashy.calls(handle.id)
    assert sum(1 for c in calls if c["node"] == "slow" and c.get("phase") == "start") == 2
    assert int(client.store.task(handle.id, "slow", 0)["deliveries"]) == 2
    assert handle.outputs("slow") == [{"slept": 5.0}]
    assert Counter(c["node"] for c in calls)["next"] == 1
    assert status.nodes["next"].tasks == 1
    assert len(client.store.history(handle.id, "slow", 0)) == 1


def test_stale_orchestrator_cannot_commit_after_its_lock_expired(tmp_path: Any) -> None:
    d = make_deployment(tmp_path, lock_timeout=0.3)
    try:
        # Given a run a, b -> j (no workers: the test drives completions itself, for real)
        app = create_app(d.settings)
        client = d.client()
        client.orchestrator  # noqa: B018  (loads the test plugins)
        p = {
            "name": "join",
            "nodes": [
                {"slug": "a", "plugin": "t_append"},
                {"slug": "b", "plugin": "t_append"},
                {
                    "slug": "j",
                    "plugin": "t_join",
                    "depends_on": ["a", "b"],
                    "fan_mode": "aggregate",
                },
            ],
        }
        handle = client.submit(p)
        store = client.store
        for slug in ("a", "b"):
            store.begin_task(handle.id, slug, 0, 1, "test")
            store.finish_task(
                handle.id,
                slug,
                0,
                1,
                "completed",
                encoded_outputs=['{"o":null,"f":{"path":["x"]}}'],
            )
        assert store.settle_pending(handle.id) == {"a", "b"}
        stalled = Orchestrator(store, CeleryPublisher(app, d.settings.default_queue), registry)
        fresh = Orchestrator(store, CeleryPublisher(app, d.settings.default_queue), registry)
        entered, release = threading.Event(), threading.Event()
        stalls: list[str] = []

        def stall(run_id: str) -> None:
            if not stalls:  # only the first decision stalls
                stalls.append(run_id)
                entered.set()
                release.wait(10)

        stalled.before_commit = stall
        # When the first orchestrator stalls inside its critical section past the lock's life
        thread = threading.Thread(target=stalled.advance, args=(handle.id,))
        thread.start()
        assert entered.wait(10)
        time.sleep(0.5)  # the lock (0.3 s) expires: nothing to wait on but time
        # and a second orchestrator settles the run meanwhile
        fresh.advance(handle.id)
        release.set()
        thread.join(10)
        # Then the stale commit was refused: j launched once, barriers counted once
        assert store.nodes(handle.id)["j"] == "running"
        assert store.launch_cursor(handle.id, "j") == 1
        assert int(store.run(handle.id)["nodes_settled"]) == 2
        assert int(store.nodes(handle.id)["j:wait"]) == 0
        assert d.queue_length() == 3  # a, b at submit; j once
    finally:
        d.close()
