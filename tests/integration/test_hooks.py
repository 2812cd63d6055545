"""Terminal-state hooks: called once per run, on a worker (DESIGN §7)."""

from __future__ import annotations

import json
import time
from typing import Any

from dagworker import Client
from dagworker.tasks import task_id, task_name
from tests.conftest import Deployment, wait_for

WAIT = 60


def hook_calls(fleet: Deployment, run_id: str, expect: int = 1) -> list[dict[str, Any]]:
    key = f"{fleet.prefix}:test:hooks:{run_id}"
    deadline = time.monotonic() + WAIT
    while fleet.redis.llen(key) < expect and time.monotonic() < deadline:
        time.sleep(0.02)
    return [json.loads(x) for x in fleet.redis.lrange(key, 0, -1)]


def drain(fleet: Deployment) -> None:
    wait_for(fleet.drained, 30)


def test_completed_hook_called_once_even_when_final_completion_is_redelivered(
    client: Client, fleet: Deployment
) -> None:
    p = {
        "name": "hooked",
        "nodes": [
            {"slug": "a", "plugin": "t_append"},
            {"slug": "b", "plugin": "t_append", "depends_on": ["a"]},
        ],
    }
    handle = client.submit(p)
    assert handle.wait(WAIT).status == "completed"
    assert [c["status"] for c in hook_calls(fleet, handle.id)] == ["completed"]
    # When the completion that finalised the run is delivered again, and the hooks are
    # scheduled again
    app = client.orchestrator.publisher.app  # type: ignore[attr-defined]
    app.send_task(
        task_name("t_append"),
        kwargs={"run": handle.id, "node": "b", "task": 0, "attempt": 1},
        task_id=task_id(handle.id, "b", 0, 1),
        queue=fleet.settings.default_queue,
    )
    client.orchestrator.publisher.publish_hooks(handle.id, "completed")
    drain(fleet)
    # Then the hook still ran exactly once
    assert [c["status"] for c in hook_calls(fleet, handle.id)] == ["completed"]


def test_failed_and_cancelled_hooks(client: Client, fleet: Deployment) -> None:
    failed = client.submit({"name": "f", "nodes": [{"slug": "a", "plugin": "t_fail"}]})
    assert failed.wait(WAIT).status == "failed"
    assert [c["status"] for c in hook_calls(fleet, failed.id)] == ["failed"]
    slow = client.submit(
        {
            "name": "c",
            "nodes": [
                {"slug": "a", "plugin": "t_sleep", "config": {"seconds": 0.3}},
                {"slug": "b", "plugin": "t_append", "depends_on": ["a"]},
            ],
        }
    )
    slow.cancel()
    assert slow.wait(WAIT).status == "cancelled"
    assert [c["status"] for c in hook_calls(fleet, slow.id)] == ["cancelled"]
