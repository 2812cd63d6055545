"""The batched read paths of the store against a real Redis, without workers.

A node's artifacts read by ``read_artifacts`` (one script per node, or chunks for large
nodes) are exactly those ``iter_artifacts`` streams; a server that lost the script still
answers; ``begin_task`` hands back the task's inputs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dagworker import Client
from dagworker.errors import StoreError
from dagworker.handoff import plan
from dagworker.orchestrator import compile_run
from dagworker.pipeline import Pipeline
from dagworker.store import READ_CHUNK, Store, encode_artifact
from tests.conftest import Deployment, commands_seen


def _commit_outputs(store: Store, run_id: str, slug: str, counts: dict[int, int]) -> None:
    k = store.keys
    for index, n in counts.items():
        items = [encode_artifact(None, {"i": index, "k": j}) for j in range(n)]
        if items:
            store.r.rpush(k.outputs(run_id, slug, index), *items)
        store.r.hset(k.counts(run_id, slug), str(index), n)


def test_read_artifacts_matches_iter_artifacts(isolated: Deployment) -> None:
    # Given a small node (tasks with 0, 1 and 3 outputs, out of index order) and a node with
    # more artifacts than one inline read returns
    store = isolated.client().store
    _commit_outputs(store, "r1", "small", {2: 1, 0: 3, 1: 0, 10: 1})
    _commit_outputs(store, "r1", "big", {0: READ_CHUNK + 7, 1: 2})
    # When both are read together, and each is streamed the old way
    read = store.read_artifacts("r1", ["small", "big", "none"])
    # Then they agree artifact by artifact, in task then emission order
    for slug in ("small", "big", "none"):
        assert read[slug] == list(store.iter_artifacts("r1", slug)), slug
    assert [a.id for a in read["small"]] == [
        "small:0:0",
        "small:0:1",
        "small:0:2",
        "small:2:0",
        "small:10:0",
    ]
    assert len(read["big"]) == READ_CHUNK + 9


def test_read_artifacts_reloads_a_lost_script(isolated: Deployment) -> None:
    # Given a store whose read script is unknown to the server (as after a restart)
    store = isolated.client().store
    _commit_outputs(store, "r2", "a", {0: 2})
    script = store._scripts["read_outputs"]
    real = script.sha
    script.sha = "0" * 40
    # When it reads, Then it loads the script again and answers
    assert [a.fields for a in store.read_artifacts("r2", ["a"])["a"]] == [
        {"i": 0, "k": 0},
        {"i": 0, "k": 1},
    ]
    assert script.sha == real


def test_begin_task_returns_the_inputs(isolated: Deployment) -> None:
    # Given a running run and a queued task whose spec names two artifacts of one task
    store = isolated.client().store
    k = store.keys
    _commit_outputs(store, "r3", "src", {4: 3})
    store.r.hset(k.run("r3"), mapping={"status": "running", "epoch": "e1"})
    spec = {"o": "src:4:0", "in": {"src": ["src:4:2", "src:4:0"]}}
    store.r.hset(
        k.task("r3", "n", 0), mapping={"state": "queued", "attempt": 1, "spec": json.dumps(spec)}
    )
    # When its first attempt begins
    begin = store.begin_task("r3", "n", 0, 1, "host")
    # Then it may run, with its spec, the run's epoch and both artifacts
    assert (begin.verdict, begin.spec, begin.epoch) == ("run", spec, "e1")
    assert begin.inputs is not None
    assert {aid: a.fields for aid, a in begin.inputs.items()} == {
        "src:4:2": {"i": 4, "k": 2},
        "src:4:0": {"i": 4, "k": 0},
    }
    # And a second delivery of a finished attempt gets nothing to run
    store.r.hset(k.task("r3", "n", 0), "state", "completed")
    assert store.begin_task("r3", "n", 0, 1, "host").verdict == "finished"


def test_inputs_carried_in_the_spec_are_not_read(isolated: Deployment) -> None:
    # Given a queued task whose spec carries its inputs (small ones, as the launcher writes)
    # and names artifacts that are not in Redis at all
    store = isolated.client().store
    k = store.keys
    store.r.hset(k.run("r4"), mapping={"status": "running", "epoch": ""})
    spec = {
        "o": "a:0:0",
        "in": {"a": ["a:0:0"], "b": ["b:2:1", "b:2:0"]},
        "a": [[None, {"x": 1}], ["a:0:0", {"y": 2}], ["a:0:0", {"y": 3}]],
    }
    store.r.hset(
        k.task("r4", "n", 0), mapping={"state": "queued", "attempt": 1, "spec": json.dumps(spec)}
    )
    # When it begins, its inputs are those of the spec, in the order it names them
    begin = store.begin_task("r4", "n", 0, 1, "host")
    assert begin.verdict == "run" and begin.inputs is not None
    assert [(a.id, a.node, a.origin, a.fields) for a in begin.inputs.values()] == [
        ("a:0:0", "a", None, {"x": 1}),
        ("b:2:1", "b", "a:0:0", {"y": 2}),
        ("b:2:0", "b", "a:0:0", {"y": 3}),
    ]


def test_a_launch_copies_only_small_inputs_into_the_spec(client: Client, fleet: Deployment) -> None:
    # Given tasks with several small inputs (aggregates of the media files), with one small
    # input each (one task per file), and with several inputs one of which is large (2 kB)
    blob = "x" * 2_000
    p = {
        "name": "embed",
        "nodes": [
            {"slug": "files", "plugin": "t_files"},
            {"slug": "big", "plugin": "t_kwargs", "config": {"blob": blob}},
            {
                "slug": "all",
                "plugin": "t_echo_all",
                "depends_on": ["files"],
                "fan_mode": "aggregate",
            },
            {"slug": "each", "plugin": "t_echo_all", "depends_on": ["files"]},
            {"slug": "one", "plugin": "t_echo_all", "depends_on": ["all"]},
            {
                "slug": "mixed",
                "plugin": "t_echo_all",
                "depends_on": ["files", "big"],
                "fan_mode": "aggregate",
            },
        ],
    }
    handle = client.submit(p)
    assert handle.wait(60).status == "completed"

    def specs(slug: str) -> list[dict[str, Any]]:
        n = handle.status().nodes[slug].tasks
        return [json.loads(client.store.task(handle.id, slug, i)["spec"]) for i in range(n)]

    files = handle.outputs("files")
    # Then the aggregate's five small inputs travel in its spec, in the order the task saw them
    (agg,) = specs("all")
    assert [fields for _, fields in agg["a"]] == files
    assert handle.outputs("all") == [{"artifacts": files}]
    # and so does the single input of a node's only task
    (one,) = specs("one")
    assert one["in"] == {"all": ["all:0:0"]} and one["a"] == [[None, {"artifacts": files}]]
    assert handle.outputs("one") == [{"artifacts": [{"artifacts": files}]}]
    # while a task among several with a single input, or one with a large input among them,
    # reads them when it begins
    assert all("a" not in s for s in specs("each")) and len(specs("each")) == 5
    (mixed,) = specs("mixed")
    assert "a" not in mixed
    assert handle.outputs("mixed") == [{"artifacts": [*files, {"kwargs": {"blob": blob}}]}]


def test_a_launch_batch_larger_than_lua_unpacks_pushes_every_message(isolated: Deployment) -> None:
    # Given a batch of 9,000 tasks (more values than one Lua unpack takes) pushed by the script
    store = isolated.client().store
    k = store.keys
    n = 9_000
    queue = f"{isolated.prefix}:kombu:big-batch"
    store.r.hset(k.run("r5"), mapping={"status": "running", "tasks_total": 0})
    specs = [json.dumps({"o": None, "i": i}) for i in range(n)]
    envelopes = [f"message-{i}" for i in range(n)]
    # When it is persisted and sent in one step
    push = (queue, envelopes)
    applied, cursor, ready = store.launch_batch("r5", "big", 0, specs, 1.0, True, push)
    # Then every task exists, every message is queued in order, and the launch is closed
    assert (applied, cursor, ready) == (True, n, False)
    assert store.r.llen(queue) == n
    assert store.r.lrange(queue, -1, -1) == ["message-0"]  # LPUSH: the first is at the right
    assert int(store.r.hget(k.run("r5"), "tasks_total")) == n
    assert store.r.hget(k.node("r5", "big"), "launched") == "1"
    assert store.task("r5", "big", n - 1)["state"] == "queued"
    assert store.r.zcard(k.outbox("r5")) == 0


def test_create_run_writes_a_large_pipeline_once(isolated: Deployment) -> None:
    # Given a pipeline of 3,000 nodes (more node-state fields than one Lua call unpacks)
    store = isolated.client().store
    waits = {f"n{i}": i % 3 for i in range(3_000)}
    record = {"id": "r6", "status": "running", "created_at": 1.5, "nodes_total": len(waits)}
    # When the run is created, every node is pending with its wait count, at version 1
    assert store.create_run("r6", record, "{}", waits) == 1
    nodes = store.nodes("r6")
    assert len(nodes) == 6_000 and nodes["n2999"] == "pending" and nodes["n2999:wait"] == "2"
    assert store.run("r6")["nodes_total"] == "3000"
    assert [e["status"] for e in store.events("r6")] == ["pending"]
    # and creating it again is refused, with nothing changed
    with pytest.raises(StoreError, match="already exists"):
        store.create_run("r6", {**record, "status": "failed"}, "{}", {"x": 0})
    assert store.run("r6")["status"] == "running" and "x" not in store.nodes("r6")


def test_create_run_starts_the_run_counters_in_its_first_write(isolated: Deployment) -> None:
    # Given a run created with its roots' ops: counter increments first, then a write of the
    # run hash, then another increment
    store = isolated.client().store
    k = store.keys
    record = {"id": "r8", "status": "running", "created_at": 1.5, "tasks_total": 0}
    ops = [
        (k.run("r8"), "hincrby", "nodes_running", 1),
        (k.node("r8", "a"), "hset", "started_at", 1.5),
        (k.run("r8"), "hincrby", "tasks_total", 3),
        (k.run("r8"), "hset", "tasks_total", 10),
        (k.run("r8"), "hincrby", "tasks_total", 2),
    ]
    # When it is created (every command Redis runs for it watched)
    with commands_seen(store.r) as seen:
        assert store.create_run("r8", record, "{}", {"a": 0}, ops=ops) == 1
    # Then the leading increments were no commands of their own (one HINCRBY: the later one)
    run_key = k.run("r8")
    increments = [c for c in seen if c.startswith(f"HINCRBY {run_key} ")]
    assert increments == [f"HINCRBY {run_key} tasks_total 2"]
    # and every op took effect in order: the leading increments in the record, the later
    # increment after the write; the version is 1 and a commit at 1 is accepted
    run = store.run("r8")
    assert (run["nodes_running"], run["tasks_total"], run["version"]) == ("1", "12", "1")
    assert store.r.hget(k.node("r8", "a"), "started_at") == "1.5"
    assert store.commit("r8", 1, [(k.run("r8"), "hset", "x", 1)]) == 2


def test_a_refused_commit_marks_only_a_running_run_deciding(isolated: Deployment) -> None:
    store = isolated.client(lock_timeout=30.0).store
    k = store.keys
    for run_id, status in (("r9", "running"), ("r10", "paused")):
        record = {"id": run_id, "status": status, "created_at": 1.5}
        store.create_run(run_id, record, "{}", {"a": 0})
        store.r.hincrby(k.run(run_id), "version", 1)  # moved on since a caller read it
    # When a caller that read version 1 commits, it is refused; only the running run is
    # marked, for the caller's lock period on the server's clock
    server_now = store.r.time()[0]
    for run_id in ("r9", "r10"):
        assert store.commit(run_id, 1, [(k.run(run_id), "hset", "x", 1)]) == -1
    assert server_now + 29 <= float(store.run("r9")["deciding"]) <= server_now + 32
    assert "deciding" not in store.run("r10")
    # A run that does not exist is not created by a refusal
    assert store.commit("r11", 1, [(k.run("r11"), "hset", "x", 1)]) == -1
    assert not store.r.exists(k.run("r11"))


def test_a_second_run_of_a_pipeline_is_compiled_from_what_begin_task_returns(
    isolated: Deployment,
) -> None:
    # Given two runs of one pipeline with different inputs, no worker, and a worker-side
    # orchestrator that compiled the first
    client = isolated.client()
    p = {
        "name": "fp",
        "input": {"tag": {"type": "string"}},
        "nodes": [
            {"slug": "a", "plugin": "t_echo_all"},
            {"slug": "b", "plugin": "t_echo_all", "depends_on": ["a"]},
        ],
    }
    first = client.submit(p, {"tag": "one"})
    second = client.submit(p, {"tag": "two"})
    worker = isolated.client().orchestrator
    store = worker.store
    one = store.begin_task(first.id, "a", 0, 1, "w", want_run=True)
    assert one.run is not None and one.run["pipeline_fp"]
    worker.compiled(first.id, one.epoch, one.run)
    # When the worker begins the second run's first task, asking for the run's fields
    two = store.begin_task(second.id, "a", 0, 1, "w", want_run=True)
    assert two.run is not None and two.run["pipeline_fp"] == one.run["pipeline_fp"]
    # Then it compiles the run without reading the run or its pipeline (gone here: a read
    # would fail), with the second run's own input
    store.r.delete(store.keys.pipeline(second.id))
    c = worker.compiled(second.id, two.epoch, two.run)
    assert c.run_id == second.id and c.run_input == {"tag": "two"}
    assert c.nodes == worker.compiled(first.id).nodes
    assert worker.compiled(first.id).run_input == {"tag": "one"}
    # and a run started with --no-cache keeps its flag
    third = client.submit(p, {"tag": "three"}, no_cache=True)
    begun = store.begin_task(third.id, "a", 0, 1, "w", want_run=True)
    assert begun.verdict == "run" and begun.run is not None
    assert worker.compiled(third.id, begun.epoch, begun.run).no_cache
    assert not worker.compiled(second.id).no_cache
    # A delivery that does not ask gets no run fields; a run without a fingerprint (created
    # by an earlier release) is read as before
    again = store.begin_task(second.id, "a", 0, 1, "w")
    assert again.verdict == "run" and again.run is None
    store.r.hdel(store.keys.run(first.id), "pipeline_fp")
    begun = store.begin_task(first.id, "a", 0, 1, "w", want_run=True)
    assert begun.verdict == "run" and begun.run is None


def test_a_handoff_larger_than_lua_unpacks_pushes_every_message(isolated: Deployment) -> None:
    # Given a solo node's completion whose successor plans 9,000 tasks (200 outputs, repeat
    # 45), with a launch batch that large: more messages than one Lua unpack takes
    client = isolated.client(launch_batch=9_000)
    store, orch = client.store, client.orchestrator
    handle = client.submit(
        {
            "name": "big-handoff",
            "nodes": [
                {"slug": "a", "plugin": "t_emit", "config": {"n": 200}},
                {"slug": "b", "plugin": "t_noop", "depends_on": ["a"], "repeat": 45},
            ],
        }
    )
    started = store.begin_task(handle.id, "a", 0, 1, "test")  # (this test is a's worker)
    outputs = [encode_artifact(None, {"i": i}) for i in range(200)]
    handed = plan(orch, orch.compiled(handle.id), "a", 0, started.spec, outputs)
    assert handed is not None
    # When it is recorded with its handoff
    done = store.finish_task(
        handle.id, "a", 0, 1, "completed", encoded_outputs=outputs, handoff=handed
    )
    # Then b's 9,000 tasks exist and every message is queued, a's root message still first
    assert done.handed
    assert isolated.queue_length() == 9_001
    assert int(store.run(handle.id)["tasks_total"]) == 9_001
    assert store.task(handle.id, "b", 8_999)["state"] == "queued"


def test_roots_over_one_launch_batch_are_launched_in_batches(isolated: Deployment) -> None:
    # Given roots that together have more tasks than one launch batch (each alone has fewer)
    wide = {
        "name": "wide-roots",
        "nodes": [{"slug": f"r{i}", "plugin": "t_noop", "repeat": 6} for i in range(3)],
    }
    roots = ["r0", "r1", "r2"]
    for batch, direct in ((20, True), (10, False)):
        client = isolated.client(launch_batch=batch)
        orch = client.orchestrator
        c = compile_run("plan-only", Pipeline.model_validate(wide), {}, {})
        # Then the run's creation script carries them only when they fit in one batch
        assert (orch._direct_roots(c, roots, 1.0) is not None) is direct
        # and either way every root's tasks are created and sent, once
        handle = client.submit(wide)
        store = client.store
        assert int(store.run(handle.id)["tasks_total"]) == 18
        for slug in roots:
            assert store.r.hget(store.keys.node(handle.id, slug), "tasks") == "6"
    assert isolated.queue_length() == 36
