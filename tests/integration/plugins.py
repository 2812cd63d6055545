"""Plugins used by the integration tests; workers import them via DAGWORKER_PLUGINS.

Each records its call in Redis (``<prefix>:test:calls:<run>``) so tests can assert exactly which
tasks ran, how often and where.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import redis

from dagworker import TaskContext, on_run, plugin
from tests.model.derive import outputs, should_fail

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["DAGWORKER_REDIS_URL"], decode_responses=True)
    return _client


def note(ctx: TaskContext, **extra: Any) -> None:
    prefix = os.environ.get("DAGWORKER_KEY_PREFIX", "dagworker")
    entry = {
        "node": ctx.node,
        "task": ctx.task_index,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "at": time.time(),
        **extra,
    }
    _redis().rpush(f"{prefix}:test:calls:{ctx.run_id}", json.dumps(entry))


@plugin("t_emit")
def t_emit(ctx: TaskContext, n: int = 1, field: str = "i") -> Iterator[dict[str, Any]]:
    """Emit n artifacts {field: k}; streamed."""
    note(ctx)
    for k in range(n):
        yield {field: k}


@plugin("t_echo_input")
def t_echo_input(ctx: TaskContext) -> dict[str, Any]:
    note(ctx)
    return {"input": ctx.input, "origin": ctx.origin}


@plugin("t_echo_all")
def t_echo_all(ctx: TaskContext) -> dict[str, Any]:
    """Return every input artifact as the task saw it, in order."""
    note(ctx)
    return {"artifacts": ctx.artifacts}


@plugin("t_append")
def t_append(ctx: TaskContext, step: str = "") -> dict[str, Any]:
    """Chain link: append this node to the path carried by the input artifact."""
    note(ctx)
    path = list((ctx.artifact or {}).get("path", []))
    return {"path": [*path, step or ctx.node], "origin_seen": ctx.origin}


@plugin("t_double")
def t_double(ctx: TaskContext) -> dict[str, Any]:
    note(ctx)
    value = (ctx.artifact or {}).get("i", 0)
    return {"i": value, "double": value * 2}


@plugin("t_sum")
def t_sum(ctx: TaskContext, key: str = "double") -> dict[str, Any]:
    note(ctx, inputs={dep: len(arts) for dep, arts in ctx.inputs.items()})
    return {
        "count": len(ctx.artifacts),
        "sum": sum(a.get(key, 0) for a in ctx.artifacts),
        "per_dep": {dep: len(arts) for dep, arts in ctx.inputs.items()},
    }


@plugin("t_join")
def t_join(ctx: TaskContext) -> dict[str, Any]:
    note(ctx)
    return {
        "seen": sorted(n for arts in ctx.inputs.values() for a in arts for n in a.get("path", []))
    }


@plugin("t_fail")
def t_fail(ctx: TaskContext, message: str = "boom") -> dict[str, Any]:
    note(ctx)
    raise RuntimeError(message)


@plugin("t_sleep")
def t_sleep(ctx: TaskContext, seconds: float = 0.5) -> dict[str, Any]:
    note(ctx, phase="start")
    time.sleep(seconds)
    note(ctx, phase="end")
    return {"slept": seconds}


def hold_key(prefix: str, run_id: str, name: str = "") -> str:
    """The key whose existence lets a run's ``t_hold`` tasks (of that ``name``) finish."""
    return f"{prefix}:test:hold:{run_id}" + (f":{name}" if name else "")


@plugin("t_hold")
def t_hold(ctx: TaskContext, timeout: float = 60.0, name: str = "") -> dict[str, Any]:
    """Runs until the test sets ``hold_key`` for this run (the test decides when it ends)."""
    note(ctx, phase="start")
    key = hold_key(os.environ.get("DAGWORKER_KEY_PREFIX", "dagworker"), ctx.run_id, name)
    deadline = time.monotonic() + timeout
    while not _redis().exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was never set")
        time.sleep(0.01)
    note(ctx, phase="end")
    return {"held": True}


@plugin("t_bad_output")
def t_bad_output(ctx: TaskContext) -> Any:
    note(ctx)
    return {"when": object()}


@plugin("t_async")
async def t_async(ctx: TaskContext, value: int = 1) -> dict[str, Any]:
    note(ctx)
    return {"value": value}


@plugin("t_required")
def t_required(ctx: TaskContext, needed: str) -> dict[str, Any]:
    note(ctx)
    return {"needed": needed}


@plugin("t_flaky")
def t_flaky(ctx: TaskContext, succeed_on: int = 3) -> dict[str, Any]:
    """Fail until attempt ``succeed_on``."""
    note(ctx)
    if ctx.attempt < succeed_on:
        raise ConnectionError(f"attempt {ctx.attempt} lost its connection")
    return {"attempt": ctx.attempt}


@plugin("t_noop")
def t_noop(ctx: TaskContext) -> dict[str, Any]:
    """No call recording: for large fan-out."""
    return {"i": (ctx.artifact or {}).get("i")}


@plugin("t_count")
def t_count(ctx: TaskContext) -> dict[str, Any]:
    return {"count": len(ctx.artifacts), "distinct": len({a.get("i") for a in ctx.artifacts})}


@plugin("t_files")
def t_files(ctx: TaskContext) -> list[dict[str, Any]]:
    """A mixed bag of media files."""
    note(ctx)
    return [
        {"name": "intro.mp4", "file_type": "video", "size": 300, "meta": {"lang": "en"}},
        {"name": "intro.en.srt", "file_type": "subtitle", "size": 4, "meta": {"lang": "en"}},
        {"name": "talk.mp4", "file_type": "video", "size": 900, "meta": {"lang": "fr"}},
        {"name": "talk.fr.srt", "file_type": "subtitle", "size": 6, "meta": {"lang": "fr"}},
        {"name": "cover.png", "file_type": "image", "size": 50, "meta": {}},
    ]


@plugin("t_tag")
def t_tag(ctx: TaskContext, tag: str = "") -> dict[str, Any]:
    note(ctx)
    src = ctx.artifact or {}
    return {"item": src.get("i", src.get("name")), "tag": tag or ctx.node}


@plugin("t_merge")
def t_merge(ctx: TaskContext) -> dict[str, Any]:
    note(ctx)
    return {
        "origin": ctx.origin,
        "per_dep": {dep: [a.get("tag") for a in arts] for dep, arts in ctx.inputs.items()},
        "items": sorted({str(a.get("item")) for a in ctx.artifacts}),
    }


@plugin("t_names")
def t_names(ctx: TaskContext) -> dict[str, Any]:
    note(ctx)
    return {"names": [a.get("name") for a in ctx.artifacts]}


@plugin("t_kwargs")
def t_kwargs(ctx: TaskContext, **kwargs: Any) -> dict[str, Any]:
    """Return exactly the keyword arguments the bindings produced."""
    note(ctx)
    return {"kwargs": kwargs}


def _timed(ctx: TaskContext, seconds: float) -> None:
    """Record the start of a delivery and work for a while (the chaos suite kills workers here)."""
    note(ctx, phase="start")
    time.sleep(seconds)


@plugin("t_chaos_emit")
def t_chaos_emit(ctx: TaskContext, n: int = 3, seconds: float = 0.2) -> list[dict[str, Any]]:
    """A source: n items, each starting a path; records start and end."""
    _timed(ctx, seconds)
    note(ctx, phase="end")
    return [{"item": k, "path": [ctx.node]} for k in range(n)]


@plugin("t_chaos_step")
def t_chaos_step(
    ctx: TaskContext, seconds: float = 0.2, fail_first: bool = False
) -> dict[str, Any]:
    """One step on one item: extend its path; fails its first attempt when asked (retries)."""
    _timed(ctx, seconds)
    if fail_first and ctx.attempt == 1:
        note(ctx, phase="fail")
        raise RuntimeError("first attempt fails on purpose")
    note(ctx, phase="end")
    src = ctx.artifact or {}
    return {"item": src.get("item", 0), "path": [*src.get("path", []), ctx.node]}


@plugin("t_chaos_gather")
def t_chaos_gather(ctx: TaskContext, seconds: float = 0.2) -> dict[str, Any]:
    """Aggregate or grouped: what arrived, per dependency."""
    _timed(ctx, seconds)
    note(ctx, phase="end")
    return {
        "count": len(ctx.artifacts),
        "items": sorted(a.get("item", -1) for a in ctx.artifacts),
        "per_dep": {dep: len(arts) for dep, arts in ctx.inputs.items()},
        "origin": ctx.origin,
    }


@on_run("completed", "failed", "cancelled", "rolled_back", "rollback_failed")
def t_record_hook(status: Any) -> None:
    prefix = os.environ.get("DAGWORKER_KEY_PREFIX", "dagworker")
    _redis().rpush(
        f"{prefix}:test:hooks:{status.run_id}",
        json.dumps({"status": status.status, "pid": os.getpid()}),
    )


# -- sagas: plugins with compensations -------------------------------------------------------


def _saga_step(
    ctx: TaskContext,
    fail: bool = False,
    hold: float = 0.0,
    undo_s: float = 0.0,
    undo_fails: bool = False,
    undo_fail_attempts: int = 0,
) -> dict[str, Any]:
    note(ctx, phase="start")
    if hold:
        time.sleep(hold)
    if fail:
        note(ctx, phase="failed")
        raise RuntimeError(f"{ctx.node} refused")
    note(ctx, phase="end")
    return {"done": ctx.node, "task": ctx.task_index, "i": (ctx.artifact or {}).get("i")}


def _undo_step(ctx: TaskContext) -> None:
    note(
        ctx,
        phase="undo",
        outputs=ctx.outputs,
        error=ctx.error,
        inputs=[a.get("i") for a in ctx.artifacts],
    )
    time.sleep(float(ctx.config.get("undo_s", 0.0)))
    blocked = _redis().exists(f"{os.environ.get('DAGWORKER_KEY_PREFIX')}:test:undo-blocked")
    if ctx.config.get("undo_fails") and blocked:
        raise RuntimeError(f"cannot undo {ctx.node}")
    if ctx.attempt <= int(ctx.config.get("undo_fail_attempts", 0)):
        raise ConnectionError(f"undo attempt {ctx.attempt} lost its connection")
    note(ctx, phase="undone")


t_saga = plugin("t_saga", rollback_retry={"max_attempts": 3, "backoff_s": 0.1})(_saga_step)
t_saga.rollback(_undo_step)


def _saga_step_cf(ctx: TaskContext, fail: bool = False) -> dict[str, Any]:
    return _saga_step(ctx, fail=fail)


t_saga_cf = plugin("t_saga_cf", compensate_failed=True)(_saga_step_cf)
t_saga_cf.rollback(_undo_step)


@plugin("t_gate")
def t_gate(ctx: TaskContext, closed_for: list[int] | None = None) -> dict[str, Any]:
    """Fails while the deployment's gate key exists (for tasks whose input ``i`` is listed)."""
    note(ctx)
    prefix = os.environ.get("DAGWORKER_KEY_PREFIX", "dagworker")
    item = (ctx.artifact or {}).get("i")
    gated = closed_for is None or item in closed_for
    if gated and _redis().exists(f"{prefix}:test:gate"):
        raise RuntimeError(f"gate closed for {ctx.node} item {item}")
    return {"i": item, "input": ctx.input.get("tag")}


@plugin("t_on_q2", queue="q2")
def t_on_q2(ctx: TaskContext) -> dict[str, Any]:
    """A plugin that names its own queue (routing by plugin); logs through ctx.logger."""
    note(ctx)
    ctx.logger.info("t_on_q2 handled item %s", (ctx.artifact or {}).get("i"))
    return {"i": (ctx.artifact or {}).get("i"), "queue": "q2"}


@plugin("t_model")
def t_model(ctx: TaskContext, k: int = 1, fail: int = 0) -> list[dict[str, Any]]:
    """The model-based test's plugin: k artifacts derived from the inputs (tests/model/derive)."""
    if should_fail(fail, ctx.artifacts):
        raise RuntimeError(f"model failure in node {ctx.node!r} task {ctx.task_index}")
    keys = [a["key"] for arts in ctx.inputs.values() for a in arts]
    return outputs(ctx.node, keys, k)


@plugin("t_big")
def t_big(ctx: TaskContext, size: int = 10) -> Iterator[dict[str, Any]]:
    """One small artifact, then one of ``size`` characters."""
    note(ctx)
    yield {"small": True}
    yield {"blob": "x" * size}


@plugin("t_weird")
def t_weird(ctx: TaskContext, kind: str = "set") -> Any:
    """Return something that is not a JSON object (or not JSON at all)."""
    note(ctx)
    weird: dict[str, Any] = {
        "set": {"s": {1, 2}},
        "bytes": {"b": b"\x00"},
        "nan": {"x": float("nan")},
        "inf": {"x": float("inf")},
        "int_keys": {1: "one"},
        "text": "just a string",
        "number": 42,
        "list_of_text": [{"ok": 1}, "not a dict"],
        "circular": _circular(),
    }
    return weird[kind]


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


@plugin("t_texts")
def t_texts(ctx: TaskContext, texts: list[str] | None = None) -> list[dict[str, Any]]:
    """One artifact per given text."""
    note(ctx)
    return [{"text": t, "n": i} for i, t in enumerate(texts or [])]


@plugin("t_seed")
def t_seed(ctx: TaskContext, seed_base: int = 0) -> dict[str, Any]:
    """One solver run per ``repeat`` index: records which seed it got."""
    note(ctx, repeat=ctx.repeat_index)
    return {"item": (ctx.artifact or {}).get("i"), "seed": seed_base + ctx.repeat_index}
