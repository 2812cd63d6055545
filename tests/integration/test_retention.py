"""Retention (DAGWORKER_RESULT_TTL) with real workers: finished runs are deleted, every key of
them, once the time is up; runs that are not finished, or not for long enough, are kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from dagworker import Client
from dagworker.errors import RunNotFound
from dagworker.states import RUN_TERMINAL
from dagworker.store import now
from tests.conftest import Deployment, deployment, node, wait_for

WAIT = 60
TTL = 60.0


@pytest.fixture
def kept(tmp_path: Any) -> Iterator[Deployment]:
    """Two workers that keep runs a week (the default): the tests sweep by hand, at a chosen
    time, with a client whose result_ttl is TTL."""
    with deployment(tmp_path) as d:
        d.start_worker(wait=False)
        d.start_worker()
        d.workers[0].wait_ready()
        yield d


def run_keys(d: Deployment, run_id: str | None = None) -> list[str]:
    """The keys of one run (of every run, when None) on the server, found by SCAN."""
    pattern = f"{d.prefix}:run:{{{run_id}}}*" if run_id else f"{d.prefix}:run:*"
    return list(d.redis.scan_iter(match=pattern, count=1000))


def ended(d: Deployment) -> dict[str, float]:
    return dict(d.redis.zrange(f"{d.prefix}:runs:ended", 0, -1, withscores=True))


def sweep(d: Deployment, after: float) -> int:
    """One retention sweep as the reconciler does it, ``after`` seconds from now."""
    return d.client(result_ttl=TTL).store.purge_expired(now() + after)


def test_finished_runs_are_deleted_with_every_key_after_the_ttl(kept: Deployment) -> None:
    client = kept.client()
    child = f"ret-child-{time.monotonic_ns() % 10**9}"
    client.register({"name": child, "nodes": [node("echo", "t_echo_input")]})
    # Given runs that finished every way, with every kind of key a run can have: a fan-out
    # with retried tasks (history, notable) and an aggregate; a saga that rolled back
    # (compensations); a parent mapping a sub-pipeline (children, and two child runs)
    fanout = client.submit(
        {
            "name": "ret-fanout",
            "nodes": [
                node("src", "t_emit", config={"n": 3}),
                node(
                    "each",
                    "t_flaky",
                    "src",
                    config={"succeed_on": 2},
                    retry={"max_attempts": 2, "backoff_s": 0.05},
                ),
                node("total", "t_count", "each", fan_mode="aggregate"),
            ],
        }
    )
    saga = client.submit(
        {
            "name": "ret-saga",
            "nodes": [
                {"slug": "a", "plugin": "t_saga"},
                {"slug": "b", "plugin": "t_saga", "depends_on": ["a"], "config": {"fail": True}},
            ],
        }
    )
    parent = client.submit(
        {
            "name": "ret-parent",
            "nodes": [
                node("src", "t_emit", config={"n": 2}),
                {"slug": "each", "pipeline": child, "depends_on": ["src"]},
            ],
        }
    )
    chain = client.submit({"name": "ret-chain", "nodes": [node("a", "t_noop")]})
    assert fanout.wait(WAIT).status == "completed"
    assert saga.wait(WAIT).status == "rolled_back"
    assert parent.wait(WAIT).status == "completed"
    assert chain.wait(WAIT).status == "completed"
    children = sorted(kept.redis.smembers(f"{kept.prefix}:run:{{{parent.id}}}:children"))
    assert len(children) == 2
    wait_for(lambda: all(client.get(c).state().terminal for c in children), WAIT)
    runs = [fanout.id, saga.id, parent.id, chain.id, *children]
    # (the chain's one node ended its run in the handoff script, the others in a commit)
    assert int(kept.redis.hget(f"{kept.prefix}:run:{{{chain.id}}}", "handoffs") or 0) == 1
    assert set(ended(kept)) == set(runs)
    prefix = f"{kept.prefix}:run:{{{fanout.id}}}"
    assert kept.redis.exists(f"{prefix}:hist:each:0", f"{prefix}:notable:each") == 2
    assert run_keys(kept, saga.id) and run_keys(kept, parent.id)
    wait_for(lambda: kept.drained(scheduled=True), WAIT)  # hooks and all sent and done

    # When the sweep runs before their time is up, nothing is deleted
    assert sweep(kept, after=TTL / 2) == 0
    assert set(ended(kept)) == set(runs)
    assert all(run_keys(kept, r) for r in runs)

    # When it runs once their time is up
    assert sweep(kept, after=TTL + 1) == len(runs)
    # Then no key of any run is left, nor the runs in the run list, and they are unknown
    assert run_keys(kept) == []
    assert client.store.run_ids() == []
    assert ended(kept) == {} and not kept.redis.zcard(f"{kept.prefix}:runs:purging")
    for run_id in runs:
        with pytest.raises(RunNotFound):
            client.get(run_id).status()
    # and a later sweep has nothing to do
    assert sweep(kept, after=TTL + 1) == 0


def test_a_run_resumed_after_it_ended_is_not_deleted(kept: Deployment) -> None:
    client = kept.client()
    # Given a run cancelled while its first node ran, then retried: its second node runs
    handle = client.submit(
        {
            "name": "ret-retried",
            "nodes": [
                node("a", "t_sleep", config={"seconds": 0.3}),
                node("b", "t_sleep", "a", config={"seconds": 2.0}),
            ],
        }
    )
    wait_for(lambda: any(c["node"] == "a" for c in kept.calls(handle.id)), WAIT)
    assert handle.cancel()
    assert handle.wait(WAIT).status == "cancelled"
    assert handle.id in ended(kept)
    wait_for(lambda: handle.status().nodes["a"].completed == 1, WAIT)
    assert handle.retry()
    wait_for(lambda: any(c["node"] == "b" for c in kept.calls(handle.id)), WAIT)
    # When the sweep runs long after it first ended, while it runs again
    assert sweep(kept, after=TTL + 1) == 0
    # Then the run and its keys are kept, and it left the retention queue
    assert handle.state().value == "running"
    assert handle.id not in ended(kept)
    assert handle.wait(WAIT).status == "completed"
    # and it is queued again, at its new finish time, when it ends again
    finished = float(kept.redis.hget(f"{kept.prefix}:run:{{{handle.id}}}", "finished_at"))
    assert ended(kept)[handle.id] == pytest.approx(finished)
    assert sweep(kept, after=TTL + 1) == 1
    assert run_keys(kept, handle.id) == []


def test_an_interrupted_deletion_is_finished_by_the_next_sweep(kept: Deployment) -> None:
    client = kept.client()
    handle = client.submit(
        {
            "name": "ret-cut",
            "nodes": [node("src", "t_emit", config={"n": 4}), node("b", "t_double", "src")],
        }
    )
    assert handle.wait(WAIT).status == "completed"
    wait_for(lambda: kept.drained(scheduled=True), WAIT)
    store, k = client.store, client.store.keys
    # Given a sweep that died right after its first, atomic, step (the run hash deleted)
    assert store._scripts["purge_run"](
        keys=[k.run(handle.id), k.runs_ended, k.runs_all, k.runs_purging],
        args=[handle.id, now() + 1, now(), *(s.value for s in RUN_TERMINAL)],
    )
    left = run_keys(kept, handle.id)
    assert left and k.run(handle.id) not in left
    with pytest.raises(RunNotFound):
        handle.status()
    # When the next sweep runs (the run's own time is not even up for this client)
    assert d_purging(kept) == [handle.id]
    assert client.store.purge_expired(now()) == 1
    # Then the rest of the run is gone
    assert run_keys(kept, handle.id) == [] and d_purging(kept) == []


def d_purging(d: Deployment) -> list[str]:
    return list(d.redis.zrange(f"{d.prefix}:runs:purging", 0, -1))


def test_runs_that_ended_before_the_sweep_existed_are_found(kept: Deployment) -> None:
    client = kept.client()
    old = client.submit({"name": "ret-old", "nodes": [node("a", "t_noop")]})
    assert old.wait(WAIT).status == "completed"
    wait_for(lambda: kept.drained(scheduled=True), WAIT)
    # Given a run that ended before runs were queued for retention (an upgrade)
    kept.redis.zrem(f"{kept.prefix}:runs:ended", old.id)
    kept.redis.delete(f"{kept.prefix}:runs:ended:backfill")
    # When the sweep runs
    assert sweep(kept, after=TTL + 1) == 1
    # Then it found the run and deleted it; the backfill went round once
    assert run_keys(kept, old.id) == []
    assert kept.redis.get(f"{kept.prefix}:runs:ended:backfill") == "done"


def test_result_ttl_zero_keeps_finished_runs(kept: Deployment) -> None:
    client = kept.client(result_ttl=0.0)
    handle = client.submit({"name": "ret-forever", "nodes": [node("a", "t_noop")]})
    assert handle.wait(WAIT).status == "completed"
    assert client.store.purge_expired(now() + 10 * 365 * 86_400) == 0
    assert handle.status().status == "completed"


def test_workers_delete_expired_runs_by_themselves(tmp_path: Any) -> None:
    # Given a worker that keeps finished runs one second, reconciling every half second
    with deployment(tmp_path, reconcile_interval=0.5) as d:
        d.start_worker(DAGWORKER_RESULT_TTL="1")
        client: Client = d.client()
        handle = client.submit(
            {
                "name": "ret-auto",
                "nodes": [node("a", "t_emit", config={"n": 3}), node("b", "t_double", "a")],
            }
        )
        assert handle.wait(WAIT).status == "completed"
        assert run_keys(d, handle.id)
        # When a few passes went by, the run is gone, every key of it, by the worker's doing
        wait_for(lambda: not run_keys(d, handle.id), 30)
        with pytest.raises(RunNotFound):
            handle.status()
        assert "finished run(s) past DAGWORKER_RESULT_TTL deleted" in d.workers[0].log()
