"""Terminal-state hooks: called once per run, on a worker (DESIGN §7)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dagworker import Client
from tests.conftest import Deployment, deployment, wait_for

WAIT = 60


def hook_calls(fleet: Deployment, run_id: str, expect: int = 1) -> list[dict[str, Any]]:
    key = f"{fleet.prefix}:test:hooks:{run_id}"
    deadline = time.monotonic() + WAIT
    while fleet.redis.llen(key) < expect and time.monotonic() < deadline:
        time.sleep(0.02)
    return [json.loads(x) for x in fleet.redis.lrange(key, 0, -1)]


def drain(fleet: Deployment) -> None:
    wait_for(lambda: fleet.drained(scheduled=True), 30)


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
    fleet.redeliver(client, handle.id, "t_append", "b", 0)
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


def test_a_run_nobody_listens_to_sends_no_hooks_task(tmp_path: Path) -> None:
    # Given workers whose plugin modules register no hooks (the bench's no-op plugins)
    with deployment(tmp_path, plugins=("bench.plugins",)) as d:
        d.start_worker(DAGWORKER_PLUGINS="bench.plugins")
        client = d.client()
        p = {
            "name": "unheard",
            "nodes": [
                {"slug": "a", "plugin": "bench_step"},
                {"slug": "b", "plugin": "bench_step", "depends_on": ["a"]},
            ],
        }
        # When a run completes
        handle = client.submit(p)
        assert handle.wait(60).status == "completed"
        # Then, once everything sent has been processed, no hooks task ran for it (a hooks
        # task claims the run's event before calling anything)
        drain(d)
        assert "hooks:completed" not in client.store.run(handle.id)
        # and the fleet's metrics count the run all the same (once the worker has flushed)
        field = json.dumps(["runs", "unheard", "completed"], separators=(",", ":"))
        wait_for(lambda: d.redis.hget(f"{d.prefix}:metrics", field) == "1", 10)
