"""Sub-pipelines with real workers (issue 8): child runs per task, propagation both ways."""

from __future__ import annotations

import time
from typing import Any

import pytest

from dagworker import Client
from dagworker.errors import PipelineInvalid
from tests.conftest import Deployment, wait_for

WAIT = 90


def register(client: Client, name: str, *nodes: dict[str, Any], **extra: Any) -> None:
    client.register({"name": name, "nodes": list(nodes), **extra})


def unique(fleet: Deployment, name: str) -> str:
    """Registered names live under the fleet's prefix: make each test's names its own."""
    return f"{name}-{time.monotonic_ns() % 10**9}"


def test_mapped_sub_pipeline_over_five_artifacts(client: Client, fleet: Deployment) -> None:
    # Given a registered child pipeline and a parent mapping it over 5 artifacts
    child = unique(fleet, "child-echo")
    register(client, child, {"slug": "echo", "plugin": "t_echo_input"})
    handle = client.submit(
        {
            "name": "parent-map",
            "nodes": [
                {"slug": "src", "plugin": "t_emit", "config": {"n": 5}},
                {"slug": "each", "pipeline": child, "depends_on": ["src"]},
                {
                    "slug": "total",
                    "plugin": "t_count",
                    "depends_on": ["each"],
                    "fan_mode": "aggregate",
                },
            ],
        }
    )
    started = time.monotonic()
    status = handle.wait(WAIT)
    took = time.monotonic() - started
    # Then there was one child run per artifact, each with that artifact as its input, and the
    # children's final artifacts are the node's outputs
    assert status.status == "completed", status.error
    assert len(status.children) == 5
    children = [client.get(cid).status() for cid in status.children]
    assert all(c.status == "completed" and c.parent for c in children)
    assert sorted(c.input["i"] for c in children) == [0, 1, 2, 3, 4]
    outputs = handle.outputs("each")
    assert sorted(o["input"]["i"] for o in outputs) == [0, 1, 2, 3, 4]
    assert [a["count"] for a in handle.outputs("total")] == [5]
    print(f"5 child runs in {took:.2f}s ({took / 5 * 1000:.0f} ms per sub-pipeline call)")


def test_failing_child_rolls_the_parent_back(client: Client, fleet: Deployment) -> None:
    child = unique(fleet, "child-fail")
    register(client, child, {"slug": "boom", "plugin": "t_fail"})
    handle = client.submit(
        {
            "name": "parent-saga",
            "nodes": [
                {"slug": "a", "plugin": "t_saga"},
                {"slug": "sub", "pipeline": child, "depends_on": ["a"]},
            ],
        }
    )
    status = handle.wait(WAIT)
    assert status.status == "rolled_back", status
    assert f"child run {status.children[0]} failed" in (status.error or "")
    assert client.get(status.children[0]).status().status == "failed"
    undone = [c for c in fleet.calls(handle.id) if c["node"] == "a" and c.get("phase") == "undone"]
    assert len(undone) == 1


def test_parent_rollback_rolls_completed_children_back(client: Client, fleet: Deployment) -> None:
    child = unique(fleet, "child-saga")
    register(client, child, {"slug": "step", "plugin": "t_saga"})
    handle = client.submit(
        {
            "name": "parent-undo",
            "nodes": [
                {"slug": "sub", "pipeline": child},
                {"slug": "after", "plugin": "t_fail", "depends_on": ["sub"]},
            ],
        }
    )
    status = handle.wait(WAIT)
    assert status.status == "rolled_back", status
    (cid,) = status.children
    child_status = client.get(cid).status()
    assert child_status.status == "rolled_back"
    assert [c["phase"] for c in fleet.calls(cid) if c["node"] == "step"][-1] == "undone"
    assert status.nodes["sub"].compensated == 1


def test_cancelling_the_parent_cancels_its_children(client: Client, fleet: Deployment) -> None:
    child = unique(fleet, "child-slow")
    register(
        client,
        child,
        {"slug": "slow", "plugin": "t_sleep", "config": {"seconds": 1.5}},
        {"slug": "later", "plugin": "t_append", "depends_on": ["slow"]},
    )
    handle = client.submit({"name": "parent-cancel", "nodes": [{"slug": "sub", "pipeline": child}]})
    wait_for(lambda: bool(handle.status().children), WAIT)
    (cid,) = handle.status().children
    wait_for(lambda: any(c["node"] == "slow" for c in fleet.calls(cid)), WAIT)
    assert handle.cancel() is True
    assert handle.wait(WAIT).status == "cancelled"
    assert client.get(cid).wait(WAIT).status == "cancelled"
    assert not any(c["node"] == "later" for c in fleet.calls(cid))


def test_unknown_and_cyclic_sub_pipelines_are_refused(client: Client, fleet: Deployment) -> None:
    with pytest.raises(PipelineInvalid, match="no registered pipeline 'nope-x'"):
        client.submit({"name": "p", "nodes": [{"slug": "s", "pipeline": "nope-x"}]})
    a, b = unique(fleet, "cyc-a"), unique(fleet, "cyc-b")
    register(client, b, {"slug": "x", "plugin": "t_emit"})
    register(client, a, {"slug": "to-b", "pipeline": b})
    with pytest.raises(PipelineInvalid, match=f"cycle across pipelines: {b} -> {a} -> {b}"):
        register(client, b, {"slug": "to-a", "pipeline": a})
