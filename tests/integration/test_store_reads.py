"""The batched read paths of the store against a real Redis, without workers.

A node's artifacts read by ``read_artifacts`` (one script per node, or chunks for large
nodes) are exactly those ``iter_artifacts`` streams; a server that lost the script still
answers; ``begin_task`` hands back the task's inputs.
"""

from __future__ import annotations

import json

from dagworker.store import READ_CHUNK, Store, encode_artifact
from tests.conftest import Deployment


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
