"""Retention (DAGWORKER_RESULT_TTL) with real workers: finished runs are deleted, every key of
them, once the time is up; runs that are not finished, or not for long enough, are kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dagworker import Client, RunHandle
from dagworker.errors import RunNotFound
from dagworker.store import now
from dagworker.store.retention import BACKFILL_EVERY_S
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


@contextmanager
def reconciler_held(d: Deployment) -> Iterator[None]:
    """The workers' reconciler passes (and so their sweeps) wait while the test holds their
    lock: a pending deletion the test set up stays as it is."""
    key = f"{d.prefix}:reconciler:lock"
    wait_for(lambda: d.redis.set(key, "test", nx=True, px=600_000), WAIT)
    try:
        yield
    finally:
        d.redis.delete(key)


def run_keys(d: Deployment, run_id: str | None = None) -> list[str]:
    """The keys of one run (of every run, when None) on the server, found by SCAN."""
    pattern = f"{d.prefix}:run:{{{run_id}}}*" if run_id else f"{d.prefix}:run:*"
    return list(d.redis.scan_iter(match=pattern, count=1000))


def ended(d: Deployment) -> dict[str, float]:
    return dict(d.redis.zrange(f"{d.prefix}:runs:ended", 0, -1, withscores=True))


def sweep(d: Deployment, after: float) -> int:
    """One retention sweep as the reconciler does it, ``after`` seconds from now."""
    return d.client(result_ttl=TTL).store.purge_expired(now() + after)


def completed(d: Deployment, client: Client, name: str, n: int = 2) -> RunHandle:
    """A run of ``src`` (emits n) -> ``b`` (one task each), completed and fully drained."""
    handle = client.submit(
        {"name": name, "nodes": [node("a", "t_emit", config={"n": n}), node("b", "t_double", "a")]}
    )
    assert handle.wait(WAIT).status == "completed"
    wait_for(lambda: d.drained(scheduled=True), WAIT)
    return handle


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
    failed = client.submit({"name": "ret-failed", "nodes": [node("a", "t_fail")]})
    assert fanout.wait(WAIT).status == "completed"
    assert saga.wait(WAIT).status == "rolled_back"
    assert parent.wait(WAIT).status == "completed"
    assert chain.wait(WAIT).status == "completed"
    assert failed.wait(WAIT).status == "failed"
    children = sorted(kept.redis.smembers(f"{kept.prefix}:run:{{{parent.id}}}:children"))
    assert len(children) == 2
    wait_for(lambda: all(client.get(c).state().terminal for c in children), WAIT)
    runs = [fanout.id, saga.id, parent.id, chain.id, failed.id, *children]
    # (the chain's one node ended its run in the handoff script, the others in a commit)
    assert int(kept.redis.hget(f"{kept.prefix}:run:{{{chain.id}}}", "handoffs") or 0) == 1
    assert set(ended(kept)) == set(runs)
    prefix = f"{kept.prefix}:run:{{{fanout.id}}}"
    assert kept.redis.exists(f"{prefix}:hist:each:0", f"{prefix}:notable:each") == 2
    assert run_keys(kept, saga.id) and run_keys(kept, parent.id)
    wait_for(lambda: kept.drained(scheduled=True), WAIT)  # hooks and all sent and done

    before = set(run_keys(kept))
    assert all(any(f"{{{r}}}" in key for key in before) for r in runs)

    # When the sweep runs before their time is up, nothing is deleted
    assert sweep(kept, after=TTL / 2) == 0
    assert set(ended(kept)) == set(runs)
    assert set(run_keys(kept)) == before
    # nor a child run whose own time is up while its parent's is not: it goes with its parent
    kept.redis.zadd(f"{kept.prefix}:runs:ended", {children[0]: now() - 10 * TTL})
    assert sweep(kept, after=TTL / 2) == 0
    assert set(ended(kept)) == set(runs) - {children[0]}
    assert set(run_keys(kept)) == before

    # When it runs once their time is up (the children are deleted with their parent)
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
    handle = completed(kept, client, "ret-cut", 4)
    store, k = client.store, client.store.keys
    # Given a sweep that died right after its first, atomic, step (the run hash deleted)
    with reconciler_held(kept):
        assert store._begin_purge(handle.id, now(), now() + 1, TTL)
        left = run_keys(kept, handle.id)
        assert left and k.run(handle.id) not in left
        with pytest.raises(RunNotFound):
            handle.status()
        # When the next sweep runs (the run's own time is not even up for this client)
        assert d_purging(kept) == [handle.id]
        assert client.store.purge_expired(now()) == 1
    # Then the rest of the run is gone
    assert run_keys(kept, handle.id) == [] and d_purging(kept) == []


def test_a_run_ended_with_tasks_in_flight_is_kept_one_ttl_more(kept: Deployment) -> None:
    client = kept.client()
    # Given a run cancelled while a task of it waits in a queue no worker consumes
    handle = client.submit(
        {
            "name": "ret-in-flight",
            "nodes": [node("a", "t_noop"), node("b", "t_noop", "a", queue="nobody-listens")],
        }
    )
    wait_for(lambda: kept.queue_length("nobody-listens") == 1, WAIT)
    assert handle.cancel()
    assert handle.wait(WAIT).status == "cancelled"
    run = kept.redis.hgetall(f"{kept.prefix}:run:{{{handle.id}}}")
    assert int(run.get("tasks_done", 0)) < int(run["tasks_total"])
    finished = float(run["finished_at"])
    # When the sweep runs once its time is up, the run is kept (its message may still come)
    assert sweep(kept, after=TTL + 1) == 0
    assert handle.status().status == "cancelled"
    assert ended(kept)[handle.id] == pytest.approx(finished + TTL)
    # and deleted one TTL later, in flight or not (its message may be lost for good)
    assert sweep(kept, after=2 * TTL + 1) == 1
    assert run_keys(kept, handle.id) == []


def test_a_run_created_again_while_its_deletion_was_pending_is_kept(kept: Deployment) -> None:
    client = kept.client()
    handle = client.submit({"name": "ret-again", "nodes": [node("a", "t_noop")]})
    assert handle.wait(WAIT).status == "completed"
    keys = set(run_keys(kept, handle.id))
    # Given a deletion pending for a run id that exists (e.g. a child id created again)
    kept.redis.zadd(f"{kept.prefix}:runs:purging", {handle.id: now()})
    # When the sweep resumes pending deletions
    assert sweep(kept, after=0) == 0
    # Then the run is left whole and the deletion dropped
    assert set(run_keys(kept, handle.id)) == keys and d_purging(kept) == []
    assert handle.status().status == "completed"


def test_a_replay_of_a_run_being_deleted_is_refused_before_it_starts(kept: Deployment) -> None:
    client = kept.client()
    handle = completed(kept, client, "ret-replay")
    store, k = client.store, client.store.keys
    before = set(kept.redis.scan_iter(match=f"{kept.prefix}:*", count=1000))
    # Given its deletion begun (the run hash gone, its nodes and outputs not yet)
    with reconciler_held(kept):
        assert store._begin_purge(handle.id, now(), now() + 1, TTL)
        # When its nodes are copied for a replay, nothing is copied and the run is unknown
        with pytest.raises(RunNotFound):
            store.copy_nodes(handle.id, "replay-target", ["a"])
        assert not list(kept.redis.scan_iter(match=f"{kept.prefix}:run:{{replay-target}}*"))
        assert k.outputs(handle.id, "a", 0) in before and kept.redis.exists(
            k.outputs(handle.id, "a", 0)
        )


def test_a_replay_copies_nothing_from_a_source_resumed_or_left_behind(
    kept: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagworker.control import replay
    from dagworker.errors import IllegalTransition, StoreError

    client = kept.client()
    handle = completed(kept, client, "ret-replay2")
    store, k = client.store, client.store.keys
    before = set(run_keys(kept))
    # Given a source that is running again (a retry between the replay's check and its copy)
    kept.redis.hset(k.run(handle.id), "status", "running")
    with pytest.raises(IllegalTransition):
        store.copy_nodes(handle.id, "replay-target", ["a"])
    kept.redis.hset(k.run(handle.id), "status", "completed")
    # Given a new run that cannot be created after the copy (a Redis error)
    orch = client.orchestrator

    def refuse(*args: Any, **kwargs: Any) -> int:
        raise StoreError("refused by the test")

    monkeypatch.setattr(orch.store, "create_run", refuse)
    with pytest.raises(StoreError):
        replay(orch, handle.id, ["b"])
    # Then neither left a key behind
    assert set(run_keys(kept)) == before


def test_staged_outputs_are_kept_as_long_as_their_run(kept: Deployment) -> None:
    client = kept.client()
    # Given a task with more outputs than go inline (they are staged, and staging expires)
    handle = client.submit(
        {"name": "ret-staged", "nodes": [node("a", "t_emit", config={"n": 250})]}
    )
    assert handle.wait(WAIT).status == "completed"
    key = client.store.keys.outputs(handle.id, "a", 0)
    # Then its committed outputs do not expire
    assert kept.redis.llen(key) == 250 and kept.redis.ttl(key) == -1


def test_due_entries_of_deleted_runs_are_dropped(kept: Deployment) -> None:
    from dagworker.reconciler import publish_due

    orch = kept.client().orchestrator
    due = f"{kept.prefix}:due"
    # Given due entries (a retry, a compensation retry, hooks) of a run that was deleted
    kept.redis.zadd(
        due, {"retry|gone-run|a|0|2": 0, "comp|gone-run|a|0|1": 0, "hook|gone-run|completed": 0}
    )
    # When the poller runs (this one or a worker's: whichever claims them first)
    publish_due(orch)
    # Then they are dropped, not leased again every 30 s (DUE_LEASE_S) for ever
    wait_for(lambda: kept.redis.zcard(due) == 0, 10)


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
    assert kept.redis.get(f"{kept.prefix}:runs:ended:backfill").startswith("done:")
    # Given another run ended by an earlier release (a rolling upgrade), after that round
    late = client.submit({"name": "ret-old", "nodes": [node("a", "t_noop")]})
    assert late.wait(WAIT).status == "completed"
    kept.redis.zrem(f"{kept.prefix}:runs:ended", late.id)
    # Then it is found when the backfill goes round again, a day later
    assert sweep(kept, after=TTL + 1) == 0
    assert sweep(kept, after=TTL + BACKFILL_EVERY_S + 2) == 1  # (the round was at +TTL+1)
    assert run_keys(kept, late.id) == []


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
        # and counted for the exporter (dagworker_runs_deleted_total)
        metrics = f"{d.prefix}:metrics"
        wait_for(lambda: int(d.redis.hget(metrics, '["runs_deleted"]') or 0) >= 1, 30)


def test_runs_are_all_deleted_while_workers_are_killed(crashy: Deployment) -> None:
    # Given workers that keep finished runs one second and are SIGKILLed and replaced while
    # 30 runs finish and are swept (crash timings: redelivery after 3 s, reconciler 0.5 s)
    ttl = {"DAGWORKER_RESULT_TTL": "1"}
    crashy.start_worker(**ttl)
    crashy.start_worker(**ttl)
    client = crashy.client()
    ids = [
        client.submit(
            {
                "name": "ret-chaos",
                "nodes": [node("a", "t_emit", config={"n": 20}), node("b", "t_double", "a")],
            }
        ).id
        for _ in range(30)
    ]
    for _ in range(6):
        time.sleep(0.7)  # the kills' pace, as in the chaos suite: nothing to wait on
        crashy.workers[-2].kill()  # the older of the two live ones
        crashy.start_worker(**ttl)
    # When the fleet is left alone
    # Then every run ended and was deleted, every key of it (no key re-created by a late
    # delivery), and no deletion is left pending
    wait_for(lambda: not run_keys(crashy), 120)
    for key in ("runs:purging", "runs:active", "runs:ended"):
        assert not crashy.redis.zcard(f"{crashy.prefix}:{key}"), key
    assert client.store.run_ids(limit=100) == []
    # and each had done all of its work first (the plugins' own records outlive the runs)
    for run_id in ids:
        ran = {(c["node"], c["task"]) for c in crashy.calls(run_id)}
        assert ran == {("a", 0), *(("b", i) for i in range(20))}, run_id


def test_prune_deletes_finished_runs_from_the_command_line(kept: Deployment) -> None:
    from click.testing import CliRunner

    from dagworker.cli import EXIT_INVALID, EXIT_OK, main

    client = kept.client()
    old = completed(kept, client, "ret-prune")
    running = client.submit(
        {"name": "ret-prune-running", "nodes": [node("a", "t_sleep", config={"seconds": 3.0})]}
    )
    wait_for(lambda: any(c["node"] == "a" for c in kept.calls(running.id)), WAIT)
    env = kept.env()
    # When finished runs older than a day are pruned: none is that old
    out = CliRunner().invoke(main, ["prune", "--older-than", "86400"], env=env)
    assert out.exit_code == EXIT_OK and "deleted 0 finished run(s)" in out.output
    assert run_keys(kept, old.id)
    # When those that ended half its age ago or more are: the finished one goes
    age = now() - float(kept.redis.hget(f"{kept.prefix}:run:{{{old.id}}}", "finished_at"))
    out = CliRunner().invoke(main, ["prune", "--older-than", str(age / 2)], env=env)
    assert out.exit_code == EXIT_OK and "deleted 1 finished run(s)" in out.output
    assert run_keys(kept, old.id) == []
    # and the running one is left alone
    assert running.state().value == "running"
    # A period that is not above 0 is refused, naming the option
    out = CliRunner().invoke(main, ["prune", "--older-than", "0"], env=env)
    assert out.exit_code == EXIT_INVALID and "--older-than" in out.output
    assert running.wait(WAIT).status == "completed"
