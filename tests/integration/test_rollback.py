"""Rollback (saga) with real workers: compensations in reverse dependency order (DESIGN §7).

Orders are checked with the timestamps the plugins themselves recorded (``note``): a
compensation's ``undo`` start must come after the ``undone`` end of every descendant's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dagworker import Client
from tests.conftest import Deployment, flag, wait_for

WAIT = 90


def saga(*nodes: dict[str, Any], name: str = "saga") -> dict[str, Any]:
    return {"name": name, "nodes": [{"plugin": "t_saga", **n} for n in nodes]}


def phases(fleet: Deployment, run_id: str, phase: str) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for call in fleet.calls(run_id):
        if call.get("phase") == phase:
            out.setdefault((call["node"], call["task"]), []).append(call["at"])
    return out


def undo_window(fleet: Deployment, run_id: str, node: str) -> tuple[float, float]:
    starts = [t for (n, _), ts in phases(fleet, run_id, "undo").items() if n == node for t in ts]
    ends = [t for (n, _), ts in phases(fleet, run_id, "undone").items() if n == node for t in ts]
    assert starts and ends, f"node {node} was not compensated"
    return min(starts), max(ends)


@pytest.fixture
def undo_blocked(fleet: Deployment) -> Iterator[str]:
    """While this key exists, plugins configured with ``undo_fails`` cannot be undone."""
    with flag(fleet, "undo-blocked") as key:
        yield key


def test_chain_rolls_back_in_reverse_order(client: Client, fleet: Deployment) -> None:
    # Given a chain a -> b -> c whose last node fails
    handle = client.submit(
        saga(
            {"slug": "a", "config": {"undo_s": 0.2}},
            {"slug": "b", "depends_on": ["a"], "config": {"undo_s": 0.2}},
            {"slug": "c", "depends_on": ["b"], "config": {"fail": True}},
        )
    )
    # When the run ends
    status = handle.wait(WAIT)
    # Then it rolled back: b was undone before a, the failed task c was not compensated
    assert status.status == "rolled_back", status
    assert "node 'c' failed" in (status.error or "")
    a_start, _ = undo_window(fleet, handle.id, "a")
    _, b_end = undo_window(fleet, handle.id, "b")
    assert a_start >= b_end
    assert ("c", 0) not in phases(fleet, handle.id, "undo")
    assert status.nodes["a"].state == status.nodes["b"].state == "rolled_back"
    assert status.nodes["c"].state == "failed"
    assert status.nodes["a"].compensated == status.nodes["b"].compensated == 1
    # and each compensation got the task's outputs and the run's error
    undo_b = next(c for c in fleet.calls(handle.id) if c["node"] == "b" and c["phase"] == "undo")
    assert undo_b["outputs"] == [{"done": "b", "task": 0, "i": None}]
    assert "node 'c' failed" in undo_b["error"]


def test_diamond_compensates_branches_in_parallel_then_the_root(
    client: Client, fleet: Deployment
) -> None:
    # Given a diamond a -> (b, c) -> d where d fails; the branches take 0.8 s to undo
    handle = client.submit(
        saga(
            {"slug": "a"},
            {"slug": "b", "depends_on": ["a"], "config": {"undo_s": 0.8}},
            {"slug": "c", "depends_on": ["a"], "config": {"undo_s": 0.8}},
            {"slug": "d", "depends_on": ["b", "c"], "config": {"fail": True}},
        )
    )
    status = handle.wait(WAIT)
    assert status.status == "rolled_back", status
    b_start, b_end = undo_window(fleet, handle.id, "b")
    c_start, c_end = undo_window(fleet, handle.id, "c")
    a_start, _ = undo_window(fleet, handle.id, "a")
    # Then b and c were undone at the same time (two workers), a only after both
    assert b_start < c_end and c_start < b_end, "independent branches did not overlap"
    assert a_start >= max(b_end, c_end)


def test_failing_compensation_leaves_ancestors_alone(
    client: Client, fleet: Deployment, undo_blocked: str
) -> None:
    # Given r -> (b, x) -> f: f fails, b cannot be undone, x can
    handle = client.submit(
        saga(
            {"slug": "r"},
            {"slug": "b", "depends_on": ["r"], "config": {"undo_fails": True}},
            {"slug": "x", "depends_on": ["r"]},
            {"slug": "f", "depends_on": ["b", "x"], "config": {"fail": True}},
        )
    )
    status = handle.wait(WAIT)
    # Then the run ends rollback_failed naming b and the ancestor left alone
    assert status.status == "rollback_failed", status
    assert "could not undo node 'b'" in (status.error or "")
    assert "left alone" in (status.error or "") and "r" in (status.error or "").split("left")[1]
    undone = {n for (n, _) in phases(fleet, handle.id, "undone")}
    assert undone == {"x"}
    assert ("r", 0) not in phases(fleet, handle.id, "undo")
    assert status.nodes["x"].state == "rolled_back"
    assert status.nodes["r"].state == "completed"
    # b's compensation was attempted three times (its own retry policy) before giving up
    assert len(phases(fleet, handle.id, "undo")[("b", 0)]) == 3

    # When the blocker is fixed and the rollback is asked for again, it resumes
    fleet.redis.delete(undo_blocked)
    assert handle.rollback() is True
    final = handle.wait(WAIT)
    assert final.status == "rolled_back", final
    assert {n for (n, _) in phases(fleet, handle.id, "undone")} == {"x", "b", "r"}
    assert len(phases(fleet, handle.id, "undone")[("x", 0)]) == 1  # not undone twice
    assert "node 'f' failed" in (final.error or "")
    # and each terminal state called its hooks once
    key = f"{fleet.prefix}:test:hooks:{handle.id}"
    wait_for(lambda: fleet.redis.llen(key) >= 2)
    hooks = sorted(json.loads(h)["status"] for h in fleet.redis.lrange(key, 0, -1))
    assert hooks == ["rollback_failed", "rolled_back"]


def test_compensation_retries_on_its_own_policy(client: Client, fleet: Deployment) -> None:
    handle = client.submit(
        saga(
            {"slug": "a", "config": {"undo_fail_attempts": 2}},
            {"slug": "b", "depends_on": ["a"], "config": {"fail": True}},
        )
    )
    status = handle.wait(WAIT)
    assert status.status == "rolled_back", status
    undo_attempts = sorted(
        c["attempt"] for c in fleet.calls(handle.id) if c["node"] == "a" and c["phase"] == "undo"
    )
    assert undo_attempts == [1, 2, 3]
    history = client.store.history(handle.id, "a", 0)
    assert [(h["kind"], h["state"]) for h in history] == [
        ("task", "completed"),
        ("compensation", "failed"),
        ("compensation", "failed"),
        ("compensation", "done"),
    ]


def test_failed_task_is_compensated_only_when_its_plugin_opts_in(
    client: Client, fleet: Deployment
) -> None:
    handle = client.submit(
        {
            "name": "opt-in",
            "nodes": [
                {"slug": "a", "plugin": "t_saga"},
                {"slug": "b", "plugin": "t_saga_cf", "depends_on": ["a"], "config": {"fail": True}},
            ],
        }
    )
    status = handle.wait(WAIT)
    assert status.status == "rolled_back", status
    undone = {n for (n, _) in phases(fleet, handle.id, "undone")}
    assert undone == {"a", "b"}
    assert status.nodes["b"].compensated == 1


def test_queued_tasks_are_cancelled_and_running_ones_finish_before_compensating(
    client: Client, fleet: Deployment
) -> None:
    # Given a fan-out of 8 where the first task fails at once and the others take 1 s
    handle = client.submit(
        {
            "name": "fan-saga",
            "nodes": [
                {"slug": "src", "plugin": "t_emit", "config": {"n": 8}},
                {
                    "slug": "each",
                    "plugin": "t_saga",
                    "depends_on": ["src"],
                    "config": {"hold": 1.0},
                    "bindings": {"fail": "{src.i | eq(0)}"},
                },
            ],
        }
    )
    status = handle.wait(WAIT)
    assert status.status == "rolled_back", status
    ends = phases(fleet, handle.id, "end")
    undos = phases(fleet, handle.id, "undo")
    # Then the tasks that were running when the run failed finished and were compensated,
    # after they finished; the ones still queued never ran
    assert ends, "no task was running when the first one failed"
    assert set(undos) == set(ends)
    assert min(t for ts in undos.values() for t in ts) >= max(t for ts in ends.values() for t in ts)
    node = status.nodes["each"]
    assert node.cancelled == 8 - 1 - len(ends) and node.cancelled > 0
    assert node.compensated == len(ends)


def test_manual_rollback_of_a_completed_run(client: Client, fleet: Deployment) -> None:
    handle = client.submit(saga({"slug": "a"}, {"slug": "b", "depends_on": ["a"]}))
    assert handle.wait(WAIT).status == "completed"
    assert handle.rollback() is True
    assert handle.rollback() is False  # idempotent
    status = handle.wait(WAIT)
    assert status.status == "rolled_back"
    a_start, _ = undo_window(fleet, handle.id, "a")
    _, b_end = undo_window(fleet, handle.id, "b")
    assert a_start >= b_end
    key = f"{fleet.prefix}:test:hooks:{handle.id}"
    wait_for(lambda: fleet.redis.llen(key) >= 2)
    hooks = sorted(json.loads(h)["status"] for h in fleet.redis.lrange(key, 0, -1))
    assert hooks == ["completed", "rolled_back"]


def test_pipeline_without_rollbacks_fails_without_rolling_back(client: Client) -> None:
    handle = client.submit(
        {
            "name": "plain",
            "nodes": [
                {"slug": "a", "plugin": "t_emit"},
                {"slug": "b", "plugin": "t_fail", "depends_on": ["a"]},
            ],
        }
    )
    assert handle.wait(WAIT).status == "failed"
