"""A node with 100,000 tasks (DESIGN §4.2: no small cap on fan-out). Runs in CI; slow."""

from __future__ import annotations

import pytest

from dagworker import Client
from tests.conftest import Deployment

N = 100_000


@pytest.mark.slow
def test_100k_task_node_completes(client: Client, fleet: Deployment) -> None:
    # Given a plugin that streams 100,000 artifacts into a single-mode node and an aggregate
    p = {
        "name": "huge",
        "nodes": [
            {"slug": "src", "plugin": "t_emit", "config": {"n": N}},
            {"slug": "each", "plugin": "t_noop", "depends_on": ["src"]},
            {"slug": "total", "plugin": "t_count", "depends_on": ["each"], "fan_mode": "aggregate"},
        ],
    }
    # When it runs on the two test workers
    handle = client.submit(p)
    status = handle.wait(1800)
    # Then every task ran once and the aggregate saw every result exactly once
    assert status.status == "completed", status.error
    assert status.nodes["each"].tasks == N and status.nodes["each"].completed == N
    assert handle.outputs("total") == [{"count": N, "distinct": N}]
    # and the launch was persisted in batches, never as one giant value
    assert client.store.r.zcard(client.store.keys.outbox(handle.id)) == 0


def test_fan_out_limit_fails_the_node_naming_the_limit(isolated: Deployment) -> None:
    # Given workers whose fan-out limit is 50
    isolated.start_worker(DAGWORKER_MAX_TASKS_PER_NODE="50")
    client = isolated.client()
    p = {
        "name": "limited",
        "nodes": [
            {"slug": "src", "plugin": "t_emit", "config": {"n": 120}},
            {"slug": "each", "plugin": "t_noop", "depends_on": ["src"]},
        ],
    }
    # When a node would get 120 tasks
    status = client.submit(p).wait(60)
    # Then the node fails with an error naming the limit, and the run fails
    assert status.status == "failed"
    assert status.nodes["each"].state == "failed"
    assert "DAGWORKER_MAX_TASKS_PER_NODE" in (status.nodes["each"].error or "")
