"""Retries and time limits with real workers (DESIGN §7)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from dagworker import Client
from dagworker.cli import main
from tests.conftest import Deployment

WAIT = 60


def one(plugin: str, **extra: Any) -> dict[str, Any]:
    return {"name": "retry", "nodes": [{"slug": "a", "plugin": plugin, **extra}]}


def test_retry_succeeds_on_attempt_3(client: Client, fleet: Deployment) -> None:
    # Given a plugin that fails twice and a node allowing 4 attempts with a short backoff
    p = one(
        "t_flaky",
        config={"succeed_on": 3},
        retry={"max_attempts": 4, "backoff_s": 0.2, "max_backoff_s": 1, "jitter": True},
    )
    # When it runs
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then the third attempt completes the run; each attempt was its own call and is recorded
    assert status.status == "completed", status.error
    assert handle.outputs("a") == [{"attempt": 3}]
    assert [c["attempt"] for c in fleet.calls(handle.id)] == [1, 2, 3]
    history = client.store.history(handle.id, "a", 0)
    assert [(h["attempt"], h["state"]) for h in history] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert "attempt 1 lost its connection" in history[0]["error"]
    assert all(h["worker"] and h["finished_at"] >= h["started_at"] for h in history)
    # backoff: attempt 2 started no earlier than half the base delay after attempt 1 ended
    assert history[1]["started_at"] - history[0]["finished_at"] >= 0.1


def test_attempts_exhausted_fail_the_run(client: Client, fleet: Deployment) -> None:
    p = one(
        "t_flaky",
        config={"succeed_on": 10},
        retry={"max_attempts": 2, "backoff_s": 0.1, "jitter": False},
    )
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "failed"
    assert len(fleet.calls(handle.id)) == 2
    assert "attempt 2 lost its connection" in (status.error or "")


def test_timeout_counts_as_a_failed_attempt(client: Client, fleet: Deployment) -> None:
    p = one(
        "t_sleep",
        config={"seconds": 30},
        timeout_s=0.5,
        retry={"max_attempts": 2, "backoff_s": 0.1},
    )
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "failed"
    history = client.store.history(handle.id, "a", 0)
    assert [h["state"] for h in history] == ["failed", "failed"]
    assert all("timed out after 0.5s" in h["error"] for h in history)
    # the plugin never reached its end
    assert not [c for c in fleet.calls(handle.id) if c.get("phase") == "end"]


def test_status_shows_attempts_and_transitions(client: Client, fleet: Deployment) -> None:
    # Given a run whose node needed three attempts
    handle = client.submit(
        one("t_flaky", config={"succeed_on": 3}, retry={"max_attempts": 3, "backoff_s": 0.1})
    )
    assert handle.wait(WAIT).status == "completed"
    # When its status is read with history (what `dagworker status` prints)
    status = handle.status(history=True)
    # Then the retried task is listed with every attempt, and the run's transitions with times
    (task,) = status.nodes["a"].history
    assert [(a.attempt, a.state) for a in task.attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert all(a.worker and a.started_at and a.finished_at for a in task.attempts)
    assert [e["status"] for e in status.events] == ["pending", "running", "completed"]
    env = fleet.env()
    text = CliRunner().invoke(main, ["status", handle.id], env=env)
    assert text.exit_code == 0, text.output
    squeezed = "".join(text.output.split())  # the table folds long cells
    assert "attemptsoffailedorretriedtasks" in squeezed
    assert "attempt2lostitsconnection" in squeezed
    raw = CliRunner().invoke(main, ["status", handle.id, "--json"], env=env)
    data = json.loads(raw.output)
    assert len(data["nodes"]["a"]["history"][0]["attempts"]) == 3
    assert data["events"][-1]["status"] == "completed"
    listing = CliRunner().invoke(main, ["status", handle.id, "--node", "a", "--json"], env=env)
    assert [a["attempt"] for a in json.loads(listing.output)[0]["attempts"]] == [1, 2, 3]
