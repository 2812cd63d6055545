"""Retry and replay with real workers (DESIGN §7): completed work is reused, not redone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from dagworker import Client
from dagworker.cli import main
from dagworker.errors import IllegalTransition, RunRefused
from tests.conftest import Deployment, flag

WAIT = 90


@pytest.fixture
def gate(fleet: Deployment) -> Iterator[str]:
    """While the gate key exists, ``t_gate`` tasks fail."""
    with flag(fleet, "gate") as key:
        yield key


def calls_by_task(fleet: Deployment, run_id: str) -> Counter[tuple[str, int]]:
    return Counter((c["node"], c["task"]) for c in fleet.calls(run_id))


FAN = {
    "name": "fan-gate",
    "input": {"tag": {"type": "string", "default": "one"}},
    "nodes": [
        {"slug": "src", "plugin": "t_emit", "config": {"n": 6}},
        {"slug": "each", "plugin": "t_gate", "depends_on": ["src"], "config": {"closed_for": [3]}},
        {"slug": "total", "plugin": "t_count", "depends_on": ["each"], "fan_mode": "aggregate"},
    ],
}


def test_retry_reuses_completed_tasks_and_nodes(
    client: Client, fleet: Deployment, gate: str
) -> None:
    # Given a run whose fan-out failed on one item
    handle = client.submit(FAN)
    first = handle.wait(WAIT)
    assert first.status == "failed"
    before = calls_by_task(fleet, handle.id)
    # When the cause is fixed and the run is retried
    fleet.redis.delete(gate)
    assert handle.retry() is True
    final = handle.wait(WAIT)
    # Then it completes under the same id, and no completed task ran again
    assert final.status == "completed", final
    after = calls_by_task(fleet, handle.id)
    assert after[("src", 0)] == 1
    rerun = {key for key in after if after[key] > before.get(key, 0)}
    completed_first_time = {key for key in before if key[0] == "each"} - rerun
    assert ("each", 3) in rerun
    assert all(after[key] == 1 for key in completed_first_time)
    assert handle.outputs("total") == [{"count": 6, "distinct": 6}]
    # and the retried task's history has both attempts, the first with its error
    index = next(i for (node, i) in rerun if node == "each" and after[(node, i)] == 2)
    history = client.store.history(handle.id, "each", index)
    assert [h["attempt"] for h in history] == [1, 2]
    assert "gate closed" in history[0]["error"] and history[1]["state"] == "completed"


def test_retry_checks_the_input_fingerprint(client: Client, fleet: Deployment, gate: str) -> None:
    handle = client.submit(FAN, {"tag": "one"})
    assert handle.wait(WAIT).status == "failed"
    fleet.redis.delete(gate)
    # a changed input is refused by default ...
    with pytest.raises(RunRefused, match="fingerprint"):
        handle.retry({"tag": "two"})
    # ... kept work plus the new input with reuse: only the tasks that run again see it
    assert handle.retry({"tag": "two"}, on_change="reuse") is True
    assert handle.wait(WAIT).status == "completed"
    seen = {a["input"] for a in handle.outputs("each")}
    assert seen == {"one", "two"}
    assert handle.status().input == {"tag": "two"}


def test_retry_reset_redoes_everything(client: Client, fleet: Deployment, gate: str) -> None:
    handle = client.submit(FAN, {"tag": "one"})
    assert handle.wait(WAIT).status == "failed"
    fleet.redis.delete(gate)
    assert handle.retry({"tag": "three"}, on_change="reset") is True
    assert handle.wait(WAIT).status == "completed"
    assert {a["input"] for a in handle.outputs("each")} == {"three"}
    assert calls_by_task(fleet, handle.id)[("src", 0)] == 2
    assert handle.status().nodes["each"].tasks == 6


def test_retry_is_refused_for_a_completed_run(client: Client) -> None:
    handle = client.submit({"name": "ok", "nodes": [{"slug": "a", "plugin": "t_emit"}]})
    assert handle.wait(WAIT).status == "completed"
    with pytest.raises(IllegalTransition, match="only a failed or cancelled run"):
        handle.retry()


def chain3() -> dict[str, Any]:
    return {
        "name": "chain3",
        "nodes": [
            {"slug": "a", "plugin": "t_append"},
            {"slug": "b", "plugin": "t_append", "depends_on": ["a"]},
            {"slug": "c", "plugin": "t_append", "depends_on": ["b"]},
        ],
    }


def test_replay_reuses_outputs_except_the_nodes_named(client: Client, fleet: Deployment) -> None:
    old = client.submit(chain3())
    assert old.wait(WAIT).status == "completed"
    new = old.replay(["b"])
    assert new.id != old.id
    status = new.wait(WAIT)
    assert status.status == "completed"
    # a was reused (not called again); b and its descendant c ran again on a's old output
    assert {c["node"] for c in fleet.calls(new.id)} == {"b", "c"}
    assert new.outputs("a") == old.outputs("a")
    assert new.outputs("c")[0]["path"] == ["a", "b", "c"]
    with pytest.raises(RunRefused, match="did you mean 'b'"):
        old.replay(["bb"])


def test_cli_retry_replay_and_rollback(client: Client, fleet: Deployment, gate: str) -> None:
    env = fleet.env()
    runner = CliRunner()
    handle = client.submit(FAN)
    assert handle.wait(WAIT).status == "failed"
    fleet.redis.delete(gate)
    result = runner.invoke(main, ["retry", handle.id, "--wait", "--timeout", "60"], env=env)
    assert result.exit_code == 0, result.output
    assert handle.state().value == "completed"
    result = runner.invoke(main, ["replay", handle.id, "--nodes", "total", "--wait"], env=env)
    assert result.exit_code == 0, result.output
    new_id = result.output.strip().splitlines()[0]
    assert client.get(new_id).status().nodes["total"].completed == 1
    # src and each (both record their calls) were reused, not run again; total does not record
    assert fleet.calls(new_id) == []
    result = runner.invoke(main, ["rollback", handle.id, "--wait"], env=env)
    assert result.exit_code == 1, result.output  # rolled back is not "completed"
    assert handle.state().value == "rolled_back"
    result = runner.invoke(main, ["retry", handle.id], env=env)
    assert result.exit_code == 2 and "use replay" in result.output
