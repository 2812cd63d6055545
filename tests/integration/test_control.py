"""Run control with real workers: cancel and pause/resume (DESIGN §7)."""

from __future__ import annotations

from typing import Any

import pytest

from dagworker import Client, RunState
from dagworker.errors import IllegalTransition
from tests.conftest import Deployment, wait_for

WAIT = 60


def chain(*sleeps: float) -> dict[str, Any]:
    nodes = []
    for i, seconds in enumerate(sleeps):
        nodes.append(
            {
                "slug": f"n{i}",
                "plugin": "t_sleep",
                "config": {"seconds": seconds},
                "depends_on": [f"n{i - 1}"] if i else [],
            }
        )
    return {"name": "control", "nodes": nodes}


def started(fleet: Deployment, run_id: str, node: str) -> bool:
    return any(c["node"] == node and c.get("phase") == "start" for c in fleet.calls(run_id))


def test_cancel_mid_chain_stops_later_nodes(client: Client, fleet: Deployment) -> None:
    # Given a chain whose second node is running
    handle = client.submit(chain(0.05, 1.0, 0.05, 0.05))
    wait_for(lambda: started(fleet, handle.id, "n1"))
    # When the run is cancelled (twice: idempotent)
    assert handle.cancel() is True
    assert handle.cancel() is False
    status = handle.wait(WAIT)
    # Then the running task finished and was recorded, and later nodes never ran
    assert status.status == "cancelled"
    wait_for(lambda: handle.status().nodes["n1"].completed == 1)
    final = handle.status()
    assert final.nodes["n2"].state == "cancelled" and final.nodes["n3"].state == "cancelled"
    assert {c["node"] for c in fleet.calls(handle.id)} == {"n0", "n1"}
    with pytest.raises(IllegalTransition):
        handle.pause()


def test_pause_then_resume(client: Client, fleet: Deployment) -> None:
    handle = client.submit(chain(0.05, 0.6, 0.05))
    wait_for(lambda: started(fleet, handle.id, "n1"))
    assert handle.pause() is True
    # the running task finishes while paused, but nothing new starts
    wait_for(lambda: handle.status().nodes["n1"].completed == 1)
    assert handle.state() is RunState.PAUSED
    assert handle.status().nodes["n2"].state == "pending"
    assert not started(fleet, handle.id, "n2")
    assert handle.resume() is True
    assert handle.wait(WAIT).status == "completed"
    assert started(fleet, handle.id, "n2")


def test_retry_a_cancelled_run_finishes_it_without_redoing_work(
    client: Client, fleet: Deployment
) -> None:
    # Given a chain cancelled while its second node runs
    handle = client.submit(chain(0.05, 0.8, 0.05, 0.05))
    wait_for(lambda: started(fleet, handle.id, "n1"))
    handle.cancel()
    assert handle.wait(WAIT).status == "cancelled"
    # When it is retried (the retry waits for n1, still running, to finish first)
    assert handle.retry() is True
    status = handle.wait(WAIT)
    # Then it completes under the same id; n0 and n1 did not run again
    assert status.status == "completed", status.error
    runs = [c["node"] for c in fleet.calls(handle.id) if c.get("phase") == "start"]
    assert sorted(runs) == ["n0", "n1", "n2", "n3"]
