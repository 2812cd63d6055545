"""The engine end to end: real Redis, real Celery worker subprocesses (DESIGN §6)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from dagworker import Client, NodeState, PipelineInvalid
from tests.conftest import Deployment, node, wait_for

WAIT = 120


def pipeline(name: str, *nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "nodes": list(nodes), **extra}


def test_linear_chain_passes_artifacts_along(client: Client, fleet: Deployment) -> None:
    # Given a chain a -> b -> c -> d where each link appends its name
    p = pipeline(
        "chain",
        node("a", "t_append"),
        node("b", "t_append", "a"),
        node("c", "t_append", "b"),
        node("d", "t_append", "c"),
    )
    # When it runs
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then it completes and the last artifact carries the whole path, with the root's origin
    assert status.status == "completed", status.error
    (last,) = handle.outputs("d")
    assert last["path"] == ["a", "b", "c", "d"]
    assert last["origin_seen"] == "a:0:0"
    assert [c["node"] for c in sorted(fleet.calls(handle.id), key=lambda c: c["at"])] == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert all(n.state == "completed" and n.tasks == 1 for n in status.nodes.values())


def test_diamond_join_runs_once_after_both_branches(client: Client, fleet: Deployment) -> None:
    p = pipeline(
        "diamond",
        node("a", "t_append"),
        node("b", "t_append", "a"),
        node("c", "t_append", "a"),
        node("d", "t_join", "b", "c", fan_mode="aggregate"),
    )
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    calls = fleet.calls(handle.id)
    assert Counter(c["node"] for c in calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    join = next(c for c in calls if c["node"] == "d")
    branches_done = max(c["at"] for c in calls if c["node"] in ("b", "c"))
    assert join["at"] >= branches_done
    assert handle.outputs("d") == [{"seen": ["a", "a", "b", "c"]}]


def test_fan_out_1000_into_aggregate(client: Client, fleet: Deployment) -> None:
    # Given a root emitting 1,000 artifacts, a single-mode node over them and an aggregate
    p = pipeline(
        "fan",
        node("src", "t_emit", config={"n": 1000}),
        node("each", "t_double", "src"),
        node("total", "t_sum", "each", fan_mode="aggregate"),
    )
    handle = client.submit(p)
    status = handle.wait(WAIT * 2)
    assert status.status == "completed", status.error
    # Then each item ran once and the aggregate saw all of them exactly once
    assert status.nodes["each"].tasks == 1000 and status.nodes["each"].completed == 1000
    (total,) = handle.outputs("total")
    assert total == {"count": 1000, "sum": 2 * sum(range(1000)), "per_dep": {"each": 1000}}
    calls = Counter((c["node"], c["task"]) for c in fleet.calls(handle.id))
    assert len(calls) == 1002 and max(calls.values()) == 1


def test_run_input_reaches_roots_with_schema_defaults(client: Client) -> None:
    p = pipeline(
        "inputs",
        node("a", "t_echo_input"),
        node("b", "t_echo_input"),
        input={
            "name": {"type": "string", "required": True},
            "size": {"type": "integer", "default": 3},
        },
    )
    handle = client.submit(p, {"name": "x"})
    assert handle.wait(WAIT).status == "completed"
    for slug in ("a", "b"):
        (out,) = handle.outputs(slug)
        assert out["input"] == {"name": "x", "size": 3}
        assert out["origin"] is None  # a root task has no input origin


def test_async_plugin_runs(client: Client) -> None:
    handle = client.submit(pipeline("async", node("a", "t_async", config={"value": 7})))
    assert handle.wait(WAIT).status == "completed"
    assert handle.outputs("a") == [{"value": 7}]


def test_completion_delivered_twice_dispatches_nothing_extra(
    client: Client, fleet: Deployment
) -> None:
    # Given a completed run a -> b(x3 fan-out) -> c(aggregate)
    p = pipeline(
        "dup",
        node("a", "t_emit", config={"n": 3}),
        node("b", "t_double", "a"),
        node("c", "t_sum", "b", fan_mode="aggregate"),
    )
    handle = client.submit(p)
    assert handle.wait(WAIT).status == "completed"
    before = handle.status()
    calls_before = len(fleet.calls(handle.id))
    # When the message of an already-completed task is delivered again (same id, same attempt)
    for index in range(3):
        fleet.redeliver(client, handle.id, "t_double", "b", index)
    # and the outcome of one is recorded a second time directly
    dup = client.store.finish_task(
        handle.id, "b", 0, 1, "completed", encoded_outputs=['{"o":null,"f":{"forged":true}}']
    )
    # Then the store calls it a duplicate, and once the queue drained nothing changed
    assert dup.verdict == "duplicate" and not dup.settle
    wait_for(fleet.drained, 30)
    after = handle.status()
    assert after.model_dump() == before.model_dump()
    assert len(fleet.calls(handle.id)) == calls_before
    assert {"forged": True} not in handle.outputs("b")


def test_failing_plugin_fails_its_task_not_the_worker(client: Client, fleet: Deployment) -> None:
    p = pipeline(
        "fails",
        node("a", "t_fail", config={"message": "bad input row 7"}),
        node("b", "t_append", "a"),
    )
    handle = client.submit(p)
    status = handle.wait(WAIT)
    assert status.status == "failed"
    assert status.nodes["a"].state == "failed" and status.nodes["b"].state == "pending"
    assert status.error is not None and "bad input row 7" in status.error
    task = client.store.task(handle.id, "a", 0)
    assert "RuntimeError: bad input row 7" in task["error"] and "Traceback" in task["traceback"]
    # the workers are still alive and serving
    assert all(w.proc.poll() is None for w in fleet.workers)
    assert client.submit(pipeline("after", node("x", "t_append"))).wait(WAIT).status == "completed"


def test_non_json_output_fails_the_task_clearly(client: Client) -> None:
    handle = client.submit(pipeline("badout", node("a", "t_bad_output")))
    status = handle.wait(WAIT)
    assert status.status == "failed"
    assert "not JSON-serialisable" in client.store.task(handle.id, "a", 0)["error"]


def test_empty_input_to_single_node_is_filtered_and_run_completes(client: Client) -> None:
    p = pipeline(
        "empty",
        node("a", "t_emit", config={"n": 0}),
        node("b", "t_double", "a"),
        node("c", "t_sum", "b", fan_mode="aggregate"),
    )
    status = client.submit(p).wait(WAIT)
    assert status.status == "completed"
    assert status.nodes["b"].state == NodeState.FILTERED.value
    assert status.nodes["c"].state == NodeState.FILTERED.value


INVALID = {
    "unknown key": pipeline("bad", node("a", "t_append", dependson=[])),
    "duplicate slug": pipeline("bad", node("a", "t_append"), node("a", "t_append")),
    "unknown dependency": pipeline("bad", node("a", "t_append", "zz")),
    "cycle": pipeline("bad", node("a", "t_append", "b"), node("b", "t_append", "a")),
    "unknown plugin": pipeline("bad", node("a", "t_apend")),
    "missing required parameter": pipeline("bad", node("a", "t_required")),
    "unknown parameter": pipeline("bad", node("a", "t_append", config={"stepp": "x"})),
    "bad retry": pipeline("bad", node("a", "t_append", retry={"max_attempts": 0})),
    "bad timeout": pipeline("bad", node("a", "t_append", timeout_s=-1)),
    "filter on non-dependency": pipeline(
        "bad",
        node("a", "t_append"),
        node("b", "t_append"),
        node("c", "t_append", "a", edge_filters={"b": {"rules": [{"field": "x", "op": "exists"}]}}),
    ),
    "bad expression": pipeline("bad", node("a", "t_append", bindings={"step": "{input.x | "})),
    "unknown namespace": pipeline("bad", node("a", "t_append", bindings={"step": "{inptu.x}"})),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_pipeline_is_refused_before_any_task_is_sent(
    case: str, client: Client, fleet: Deployment
) -> None:
    # Given a quiet queue: the hooks of runs that ended in earlier tests are sent by the
    # workers' due poll shortly after those runs end, and would land in the middle of this test
    wait_for(lambda: client.store.r.zcard(client.store.keys.due) == 0 and not fleet.queue_length())
    runs_before = client.store.r.zcard(client.store.keys.runs_all)
    queued_before = fleet.queue_length()
    with pytest.raises(PipelineInvalid) as info:
        client.submit(INVALID[case])
    assert info.value.problems, "a refusal names at least one problem"
    assert client.store.r.zcard(client.store.keys.runs_all) == runs_before
    # the shared fleet may still be draining an earlier test's message, never gaining one
    # (test_hostile.py checks the exact emptiness on a deployment without workers)
    assert fleet.queue_length() <= queued_before


def test_validation_reports_every_problem_at_once(client: Client) -> None:
    bad = pipeline(
        "bad",
        node("a", "t_apend", dependson=[]),
        node("b", "t_append", "zz"),
        node("b", "t_required"),
    )
    with pytest.raises(PipelineInvalid) as info:
        client.submit(bad)
    text = str(info.value)
    assert "unknown key 'dependson'; did you mean 'depends_on'?" in text
    assert "node 'b': duplicate slug" in text
    assert "requires parameter 'needed'" in text


def test_invalid_run_input_is_refused(client: Client) -> None:
    p = pipeline(
        "typed", node("a", "t_echo_input"), input={"n": {"type": "integer", "required": True}}
    )
    with pytest.raises(PipelineInvalid, match="input 'n'"):
        client.submit(p, {})
    with pytest.raises(PipelineInvalid, match="expected integer"):
        client.submit(p, {"n": "3"})
