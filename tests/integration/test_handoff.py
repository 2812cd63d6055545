"""Handoff (dagworker/handoff.py): a completion launches its node's successors in its own script,
only when the orchestrator would have decided the same; real Redis, real workers."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from dagworker import Client
from dagworker.handoff import SOLO, plan
from dagworker.lock import RunLock
from dagworker.orchestrator import compile_run
from dagworker.pipeline import Pipeline
from tests.conftest import Deployment, node, wait_for

WAIT = 60


def handoffs(client: Client, run_id: str) -> int:
    return int(client.store.run(run_id).get("handoffs") or 0)


def assert_clean(client: Client, run_id: str, tasks: int) -> None:
    """What a finished run's bookkeeping holds whichever path settled its nodes."""
    run = client.store.run(run_id)
    k = client.store.keys
    assert int(run["tasks_total"]) == int(run["tasks_done"]) == tasks
    assert int(run["nodes_settled"]) == int(run["nodes_total"])
    assert int(run["nodes_running"]) == 0
    for key in (k.settle(run_id), k.launching(run_id), k.outbox(run_id)):
        assert client.store.r.exists(key) == 0, key


def test_chain_links_are_handed_off(client: Client, fleet: Deployment) -> None:
    p = {
        "name": "handoff-chain",
        "nodes": [
            node("a", "t_append"),
            node("b", "t_append", "a"),
            node("c", "t_append", "b"),
            node("d", "t_append", "c"),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    # a, b and c launched their successor themselves, and d, the last node, ended the run
    assert handoffs(client, handle.id) == 4
    assert client.store.r.zscore(client.store.keys.runs_active, handle.id) is None
    assert [e["status"] for e in client.store.events(handle.id)][-1] == "completed"
    assert handle.outputs("d") == [{"path": ["a", "b", "c", "d"], "origin_seen": "a:0:0"}]
    assert Counter(c["node"] for c in fleet.calls(handle.id)) == dict.fromkeys("abcd", 1)
    for slug in "abcd":
        n = status.nodes[slug]
        assert n.state == "completed" and n.tasks == 1
        meta = client.store.r.hgetall(client.store.keys.node(handle.id, slug))
        assert float(meta["started_at"]) <= float(meta["finished_at"])
    assert_clean(client, handle.id, 4)


def test_diamond_hands_off_the_fork_and_one_branch(client: Client, fleet: Deployment) -> None:
    p = {
        "name": "handoff-diamond",
        "nodes": [
            node("a", "t_append"),
            node("b", "t_append", "a"),
            node("c", "t_append", "a"),
            node("d", "t_join", "b", "c", fan_mode="aggregate"),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    # a claims b and c; the first of b and c to finish lowers d's barrier; the second makes d
    # ready and goes through the orchestrator (d's inputs are not all its own); d ends the run
    assert handoffs(client, handle.id) == 3
    assert Counter(c["node"] for c in fleet.calls(handle.id)) == dict.fromkeys("abcd", 1)
    assert status.nodes["d"].tasks == 1
    assert_clean(client, handle.id, 4)


def test_a_held_run_lock_sends_the_completion_to_the_orchestrator(
    client: Client, fleet: Deployment
) -> None:
    p = {
        "name": "handoff-locked",
        "nodes": [
            node("a", "t_sleep", config={"seconds": 0.3}),
            node("b", "t_append", "a"),
            node("c", "t_append", "b"),
        ],
    }
    handle = client.submit(p)
    # Given the run's lock held (as by an orchestrator deciding) while a finishes
    lock = RunLock(client.store.r, client.store.keys.lock(handle.id), 60.0)
    lock.acquire()
    try:
        wait_for(lambda: client.store.task(handle.id, "a", 0)["state"] == "completed", WAIT)
        # Then a is left to the orchestrator: nothing of b was written
        assert client.store.settle_pending(handle.id) == {"a"}
        assert client.store.nodes(handle.id)["b"] == "pending"
        assert not client.store.task(handle.id, "b", 0)
        assert handoffs(client, handle.id) == 0
    finally:
        lock.release()
    # And once the lock is free, the orchestrator launches b, b hands c off, c ends the run
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert handoffs(client, handle.id) == 2
    assert Counter(c["node"] for c in fleet.calls(handle.id)) == {"a": 2, "b": 1, "c": 1}
    assert_clean(client, handle.id, 3)


def test_a_paused_run_launches_nothing_until_resumed(client: Client, fleet: Deployment) -> None:
    p = {
        "name": "handoff-paused",
        "nodes": [node("a", "t_sleep", config={"seconds": 0.5}), node("b", "t_append", "a")],
    }
    handle = client.submit(p)
    wait_for(lambda: any(c.get("phase") == "start" for c in fleet.calls(handle.id)), WAIT)
    assert handle.pause()
    wait_for(lambda: handle.status().nodes["a"].state == "completed", WAIT)
    # a settled, but a paused run claims nothing: b was neither handed off nor launched
    assert client.store.nodes(handle.id)["b"] == "pending"
    assert not client.store.task(handle.id, "b", 0)
    assert handoffs(client, handle.id) == 0
    assert handle.resume()
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert handoffs(client, handle.id) == 1  # b, launched on resume, ended the run
    assert Counter(c["node"] for c in fleet.calls(handle.id)) == {"a": 2, "b": 1}
    assert_clean(client, handle.id, 2)


def test_a_run_with_a_failed_node_is_not_completed_by_its_last_node(
    client: Client, fleet: Deployment
) -> None:
    p = {
        "name": "handoff-failed",
        "nodes": [
            node("bad", "t_fail", on_failure="continue"),
            node("slow", "t_sleep", config={"seconds": 0.5}),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # The run fails: whichever node settles last, a failed node keeps the handoff from
    # completing the run
    assert status.status == "failed", status.error
    assert status.nodes["bad"].state == "failed" and status.nodes["slow"].state == "completed"
    finished = {
        slug: float(client.store.r.hget(client.store.keys.node(handle.id, slug), "finished_at"))
        for slug in ("bad", "slow")
    }
    # slow (usually last) ended nothing by handoff; had it settled first, it settled by one
    assert handoffs(client, handle.id) == (0 if finished["slow"] > finished["bad"] else 1)
    assert_clean(client, handle.id, 2)


def test_a_duplicated_completion_hands_nothing_off_twice(client: Client, fleet: Deployment) -> None:
    p = {
        "name": "handoff-dup",
        "nodes": [node("a", "t_append"), node("b", "t_append", "a"), node("c", "t_append", "b")],
    }
    handle = client.submit(p)
    assert handle.wait(WAIT).status == "completed"
    before = handle.status().model_dump()
    calls = len(fleet.calls(handle.id))
    # When a's message is delivered again
    fleet.redeliver(client, handle.id, "t_append", "a", 0)
    # and its completion is recorded again with the handoff a worker would plan for it
    orch = client.orchestrator
    c = orch.compiled(handle.id)
    spec = json.loads(client.store.task(handle.id, "a", 0)["spec"])
    outputs = ['{"o":null,"f":{"path":["a"],"origin_seen":null}}']
    forged = plan(orch, c, "a", 0, spec, outputs)
    assert forged is not None  # a would qualify: what stops it is the fence
    dup = client.store.finish_task(
        handle.id, "a", 0, 1, "completed", encoded_outputs=outputs, handoff=forged
    )
    # Then nothing is written and nothing is sent
    assert dup.verdict == "duplicate" and not dup.settle and not dup.handed
    wait_for(fleet.drained, 30)
    assert handle.status().model_dump() == before
    assert len(fleet.calls(handle.id)) == calls
    assert int(client.store.run(handle.id)["tasks_total"]) == 3


def _compiled(client: Client, nodes: list[dict[str, Any]]) -> Any:
    pipeline = Pipeline.model_validate({"name": "plan-only", "nodes": nodes})
    return compile_run("plan-only-run", pipeline, {}, {})


def test_what_qualifies_for_a_handoff(client: Client) -> None:
    orch = client.orchestrator
    one = ['{"o":null,"f":{"i":0}}']
    three = [json.dumps({"o": None, "f": {"i": i}}) for i in range(3)]
    solo = {"o": None, "root": True, SOLO: 1}
    # A task that is not its node's only one never hands off
    c = _compiled(client, [node("a", "t_emit"), node("b", "t_append", "a")])
    assert plan(orch, c, "a", 0, {"o": None, "root": True}, one) is None
    # A solo task claims its single-dependency successors with one task per artifact
    h = plan(orch, c, "a", 0, solo, three)
    assert h is not None
    body = json.loads(h.plan)
    (claim,) = body["claim"]
    assert claim[0] == "b" and len(claim[2]) == 3
    specs = [json.loads(spec) for _, spec in claim[2]]
    assert [s["in"] for s in specs] == [{"a": [f"a:0:{i}"]} for i in range(3)]
    assert all(SOLO not in s for s in specs)  # b has three tasks
    ((queue_pos, envelopes),) = body["push"]
    assert len(envelopes) == 3 and h.keys[queue_pos - 12].endswith(":dagworker")
    # A successor with one task is marked solo, so its completion may hand off in turn
    (claim,) = json.loads(plan(orch, c, "a", 0, solo, one).plan)["claim"]  # type: ignore[union-attr]
    assert json.loads(claim[2][0][1])[SOLO] == 1
    # A successor waiting for another node too is only counted down
    c = _compiled(
        client, [node("a", "t_emit"), node("z", "t_emit"), node("j", "t_join", "a", "z")]
    )
    body = json.loads(plan(orch, c, "a", 0, solo, one).plan)  # type: ignore[union-attr]
    assert body["claim"] == [] and body["wait"] == ["j"]
    # No handoff when a successor would get no task (filtered), or more than a launch batch
    c = _compiled(
        client,
        [
            node("a", "t_emit"),
            node(
                "b",
                "t_append",
                "a",
                edge_filters={"a": {"rules": [{"field": "i", "op": "gt", "value": 5}]}},
            ),
        ],
    )
    assert plan(orch, c, "a", 0, solo, three) is None
    many = [json.dumps({"o": None, "f": {"i": i}}) for i in range(501)]
    c = _compiled(client, [node("a", "t_emit"), node("b", "t_append", "a")])
    assert plan(orch, c, "a", 0, solo, many) is None
    # nor when the successors' tasks together are more than a launch batch
    some = many[:300]
    c = _compiled(
        client, [node("a", "t_emit"), node("b", "t_append", "a"), node("c", "t_append", "a")]
    )
    assert plan(orch, c, "a", 0, solo, some[:250]) is not None
    assert plan(orch, c, "a", 0, solo, some) is None


def test_every_path_writes_the_same_records(client: Client, fleet: Deployment) -> None:
    # The record of a queued task and of a launched node is written in three places (a run's
    # creation for its roots, a handoff, launch_batch.lua) and a run's end in two (a handoff,
    # the orchestrator's commit): they must write the same fields.
    ends_by_handoff = {
        "name": "records-a",
        "nodes": [
            node("src", "t_emit", config={"n": 2}),  # created with the run
            node("each", "t_noop", "src"),  # handed off by src
            node("total", "t_count", "each", fan_mode="aggregate"),  # launched, then ends it
        ],
    }
    ends_by_orchestrator = {
        "name": "records-b",
        "nodes": [node("src", "t_emit", config={"n": 2}), node("each", "t_noop", "src")],
    }
    a = client.submit(ends_by_handoff)
    b = client.submit(ends_by_orchestrator)
    assert a.wait(WAIT).status == "completed" and b.wait(WAIT).status == "completed"
    wait_for(lambda: fleet.drained(scheduled=True), 30)  # hooks have run for both
    assert (handoffs(client, a.id), handoffs(client, b.id)) == (2, 1)
    store, r = client.store, client.store.r

    def task_fields(run_id: str, slug: str) -> set[str]:
        return set(store.task(run_id, slug, 0))

    def node_fields(run_id: str, slug: str) -> set[str]:
        return set(r.hgetall(store.keys.node(run_id, slug)))

    assert task_fields(a.id, "src") == task_fields(a.id, "each") == task_fields(a.id, "total")
    assert node_fields(a.id, "src") == node_fields(a.id, "each") == node_fields(a.id, "total")
    assert set(store.run(a.id)) == set(store.run(b.id))
    for run_id in (a.id, b.id):
        assert [e["status"] for e in store.events(run_id)] == ["pending", "running", "completed"]
        assert r.zscore(store.keys.runs_active, run_id) is None
        assert_clean(client, run_id, 4 if run_id == a.id else 3)
