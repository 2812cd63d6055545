"""Handoff (dagworker/handoff.py): a completion launches its node's successors in its own script,
only when the orchestrator would have decided the same; real Redis, real workers."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from dagworker import Client
from dagworker.handoff import MAX_JOIN_INPUTS, SOLO, plan
from dagworker.lock import RunLock
from dagworker.orchestrator import compile_run
from dagworker.pipeline import Pipeline
from tests.conftest import Deployment, node, wait_for
from tests.integration.plugins import hold_key

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


DIAMOND = {
    "name": "handoff-diamond",
    "nodes": [
        node("a", "t_append"),
        node("b", "t_append", "a"),
        node("c", "t_append", "a"),
        node("d", "t_join", "b", "c", fan_mode="aggregate"),
    ],
}


def same_as_orchestrator(client: Client, run_id: str, slug: str) -> None:
    """The specs persisted for a node's tasks are, byte for byte, what the orchestrator's
    launch would persist now (inputs in ``depends_on`` order, embedded artifacts, bindings)."""
    orch = client.orchestrator
    c = orch.compiled(run_id)
    expected = list(orch._specs(c, c.nodes[slug]))
    stored = [client.store.task(run_id, slug, i)["spec"] for i in range(len(expected))]
    assert stored == expected
    assert int(client.store.r.hget(client.store.keys.node(run_id, slug), "tasks")) == len(expected)


def test_a_join_is_launched_by_its_last_dependency(isolated: Deployment) -> None:
    # One solo worker with prefetch 1 runs the tasks one at a time, in the order they were
    # queued: b finishes before c starts, so c's completion finds b completed
    isolated.start_worker()
    client = isolated.client()
    fan_in = {
        "name": "handoff-fan-in",
        "nodes": [
            node("r1", "t_append"),
            node("r2", "t_emit", config={"n": 3}),
            node("r3", "t_append"),
            node("x", "t_echo_all", "r3", "r2", "r1", fan_mode="aggregate"),
            node("y", "t_join", "r1", "r2", "r3", fan_mode="aggregate"),
        ],
    }
    # j's other dependency is filtered (no task): not a completed one, so the orchestrator
    # decides j, whichever of a and src finishes last
    filtered = {
        "name": "handoff-filtered-join",
        "nodes": [
            node("src", "t_emit", config={"n": 2}),
            node(
                "f",
                "t_append",
                "src",
                passthrough=True,
                edge_filters={"src": {"rules": [{"field": "i", "op": "gt", "value": 5}]}},
            ),
            node("a", "t_append"),
            node("j", "t_echo_all", "a", "f", fan_mode="aggregate"),
        ],
    }
    diamond, layers, passing = (client.submit(p) for p in (DIAMOND, fan_in, filtered))
    for handle in (diamond, layers, passing):
        status = handle.wait(WAIT)
        assert status.status == "completed", status.error
        ran = Counter(c["node"] for c in isolated.calls(handle.id))
        assert ran == {s: 1 for s, n in status.nodes.items() if n.state == "completed"}
    # a claims b and c; b lowers d's barrier; c, d's last dependency, claims d; d ends the run
    assert handoffs(client, diamond.id) == 4
    assert diamond.outputs("d") == [{"seen": ["a", "a", "b", "c"]}]
    same_as_orchestrator(client, diamond.id, "d")
    assert_clean(client, diamond.id, 4)
    # r1 and r2 lower the barriers; r3 claims both joins with all their inputs; the first join
    # to finish leaves the run to the second, which ends it
    assert handoffs(client, layers.id) == 5
    assert layers.outputs("y") == [{"seen": ["r1", "r3"]}]
    (x,) = layers.outputs("x")
    # x's inputs in its depends_on order (r3, r2, r1), each dependency's in emission order
    assert [a.get("path", a.get("i")) for a in x["artifacts"]] == [["r3"], 0, 1, 2, ["r1"]]
    for slug in "xy":
        same_as_orchestrator(client, layers.id, slug)
    assert_clean(client, layers.id, 5)
    # the filtered node passes src's artifacts through to j
    assert passing.status().nodes["f"].state == "filtered"
    (j,) = passing.outputs("j")
    assert len(j["artifacts"]) == 3  # a's one and src's two, through f
    same_as_orchestrator(client, passing.id, "j")
    assert_clean(client, passing.id, 3)


def test_branches_finishing_together_leave_the_join_to_the_orchestrator(
    isolated: Deployment,
) -> None:
    # Given b and c running at once, each planned while the other was still running (this test
    # plays the workers' part: begin, plan, finish)
    client = isolated.client()
    store, orch = client.store, client.orchestrator
    handle = client.submit(DIAMOND)
    run_id = handle.id

    def begin(slug: str) -> dict[str, Any]:
        started = store.begin_task(run_id, slug, 0, 1, "test")
        assert started.verdict == "run"
        return started.spec

    def output(slug: str) -> list[str]:
        path = ["a"] if slug == "a" else ["a", slug]
        return [json.dumps({"o": None, "f": {"path": path}})]

    spec = begin("a")
    c = orch.compiled(run_id)
    handed = plan(orch, c, "a", 0, spec, output("a"))
    first = store.finish_task(
        run_id, "a", 0, 1, "completed", encoded_outputs=output("a"), handoff=handed
    )
    assert first.handed
    specs = {slug: begin(slug) for slug in "bc"}
    plans = {slug: plan(orch, c, slug, 0, specs[slug], output(slug)) for slug in "bc"}
    for planned in plans.values():
        assert planned is not None and json.loads(planned.plan)["wait"] == ["d"]
    # When both finish with those plans
    b = store.finish_task(
        run_id, "b", 0, 1, "completed", encoded_outputs=output("b"), handoff=plans["b"]
    )
    c_done = store.finish_task(
        run_id, "c", 0, 1, "completed", encoded_outputs=output("c"), handoff=plans["c"]
    )
    # Then the first lowers d's barrier and the second, which would make d ready, is settled
    # by the orchestrator: d is launched once, with both branches' outputs
    assert b.handed and not c_done.handed and c_done.settle
    assert store.nodes(run_id)["d"] == "pending"
    orch.advance(run_id, settling="c")
    assert store.nodes(run_id)["d"] == "running"
    isolated.start_worker()  # runs d (and finds b's and c's messages finished)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert handoffs(client, run_id) == 3  # a, b, and d, which ended the run
    assert [c["node"] for c in isolated.calls(run_id)] == ["d"]
    assert handle.outputs("d") == [{"seen": ["a", "a", "b", "c"]}]
    assert_clean(client, run_id, 4)


def test_a_join_with_many_inputs_is_planned_by_the_orchestrator(
    client: Client, fleet: Deployment
) -> None:
    def join_of(n: int) -> dict[str, Any]:
        return {
            "name": f"handoff-join-{n}",
            "nodes": [
                node("other", "t_emit", config={"n": n}),
                node("a", "t_append"),
                node("j", "t_echo_all", "a", "other", fan_mode="aggregate"),
            ],
        }

    orch = client.orchestrator
    for n in (3, MAX_JOIN_INPUTS, MAX_JOIN_INPUTS + 1):
        handle = client.submit(join_of(n))
        assert handle.wait(WAIT).status == "completed"
        # Given j ready again, as it was when a or other finished last: a's completion
        # plans it from what other emitted, when that is few enough to read on the
        # completion path, exactly as the orchestrator's launch would
        store = client.store
        store.r.hset(store.keys.nodes(handle.id), mapping={"j": "pending", "j:wait": 1})
        spec = json.loads(store.task(handle.id, "a", 0)["spec"])
        outputs = store.r.lrange(store.keys.outputs(handle.id, "a", 0), 0, -1)  # as recorded
        c = orch.compiled(handle.id)
        planned = plan(orch, c, "a", 0, spec, outputs)
        if n > MAX_JOIN_INPUTS:
            assert planned is None  # the orchestrator plans j
            continue
        assert planned is not None
        ((slug, _, tasks),) = json.loads(planned.plan)["claim"]
        assert slug == "j" and len(tasks) == 1
        claimed = json.loads(tasks[0][1])
        assert claimed[SOLO] == 1
        assert [tasks[0][1]] == list(orch._specs(c, c.nodes["j"]))
        assert list(claimed["in"]) == ["a", "other"] and len(claimed["in"]["other"]) == n
        assert ("a" in claimed) == (n == 3)  # small inputs travel in the spec


def test_an_orchestrator_that_read_before_a_handoff_cannot_commit_over_it(
    client: Client, fleet: Deployment
) -> None:
    p = {
        "name": "handoff-locked",
        "nodes": [
            node("a", "t_hold"),
            node("b", "t_hold", "a", config={"name": "b"}),
            node("c", "t_append", "b"),
        ],
    }
    handle = client.submit(p)
    store, k = client.store, client.store.keys
    calls = lambda: fleet.calls(handle.id)  # noqa: E731
    # Given an orchestrator holding the run's lock, having read the run (b pending), while a
    # finishes
    wait_for(lambda: any(c.get("phase") == "start" for c in calls()), WAIT)
    lock = RunLock(store.r, k.lock(handle.id), 60.0)
    lock.acquire()
    try:
        read = store.run(handle.id)
        assert store.nodes(handle.id)["b"] == "pending"
        store.r.set(hold_key(fleet.prefix, handle.id), 1)  # a may finish now
        # Then a's completion hands b off all the same (the lock only keeps orchestrators
        # from deciding at once)
        wait_for(lambda: handoffs(client, handle.id) == 1, WAIT)
        assert store.nodes(handle.id)["a"] == "completed"
        assert store.settle_pending(handle.id) == set()
        wait_for(lambda: any(c["node"] == "b" for c in calls()), WAIT)  # b runs
        # And the orchestrator's decision from its earlier read (claiming b itself) is
        # refused whole: the handoff moved the version; the refusal marks the run deciding
        # (for its lock period: a long one here, so a slow machine cannot outlast it)
        slow = fleet.client(lock_timeout=120.0).store
        claim = [(k.nodes(handle.id), "hset", "b", "running"), (k.run(handle.id), "hset", "x", 1)]
        assert slow.commit(handle.id, int(read["version"]), claim) == -1
        run = store.run(handle.id)
        assert "x" not in run and float(run["deciding"]) > time.time() + 60
        # When b finishes while that orchestrator decides again, b's completion yields to it:
        # b waits in the settle set, c is not launched
        store.r.set(hold_key(fleet.prefix, handle.id, "b"), 1)
        wait_for(lambda: store.settle_pending(handle.id) == {"b"}, WAIT)
        assert store.nodes(handle.id)["c"] == "pending" and handoffs(client, handle.id) == 1
        # and its next commit clears the mark
        version = int(store.run(handle.id)["version"])
        assert store.commit(handle.id, version, [(k.run(handle.id), "hset", "x", 1)]) > 0
        assert "deciding" not in store.run(handle.id)
    finally:
        lock.release()
    # Then the orchestrator settles b and launches c, whose completion ends the run
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert handoffs(client, handle.id) == 2
    assert Counter(c["node"] for c in calls()) == {"a": 2, "b": 2, "c": 1}
    assert_clean(client, handle.id, 3)


def test_an_expired_deciding_mark_is_cleared_by_the_next_handoff(
    client: Client, fleet: Deployment
) -> None:
    p = {"name": "handoff-expired", "nodes": [node("a", "t_hold"), node("b", "t_append", "a")]}
    handle = client.submit(p)
    store = client.store
    # Given a run left marked deciding by an orchestrator that never committed again, long ago
    wait_for(lambda: any(c.get("phase") == "start" for c in fleet.calls(handle.id)), WAIT)
    store.r.hset(store.keys.run(handle.id), "deciding", int(time.time()) - 3600)
    store.r.set(hold_key(fleet.prefix, handle.id), 1)
    # When a finishes, it hands b off all the same, and the mark is gone
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert handoffs(client, handle.id) == 2
    assert "deciding" not in store.run(handle.id)


def test_a_paused_run_launches_nothing_until_resumed(client: Client, fleet: Deployment) -> None:
    p = {
        "name": "handoff-paused",
        "nodes": [node("a", "t_hold"), node("b", "t_append", "a")],
    }
    handle = client.submit(p)
    wait_for(lambda: any(c.get("phase") == "start" for c in fleet.calls(handle.id)), WAIT)
    assert handle.pause()
    client.store.r.set(hold_key(fleet.prefix, handle.id), 1)  # a finishes while paused
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
    assert len(envelopes) == 3 and h.keys[queue_pos - 11].endswith(":dagworker")
    # A successor with one task is marked solo, so its completion may hand off in turn
    (claim,) = json.loads(plan(orch, c, "a", 0, solo, one).plan)["claim"]  # type: ignore[union-attr]
    assert json.loads(claim[2][0][1])[SOLO] == 1
    # A successor waiting for another node too is only counted down
    c = _compiled(client, [node("a", "t_emit"), node("z", "t_emit"), node("j", "t_join", "a", "z")])
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
