"""Sub-pipelines (composition): a node whose ``pipeline:`` names a registered pipeline runs it
as a child run, once per task (so ``fan_mode: single`` maps it over the input artifacts).

- A task of such a node *starts* its child run and returns; the task stays ``running`` while the
  child runs, without holding a worker. The child's id is deterministic
  (``<parent>.<node>.<task>.<attempt>``), so a redelivered task finds its child instead of
  starting a second one.
- When the child ends, the hooks task of its terminal state (scheduled in the same commit that
  ended it, so it cannot be lost) reports to the parent first: ``completed`` completes the
  parent task with the child's final artifacts (those of its sink nodes) as outputs; any other
  end fails it (and the node's retry policy applies: a new attempt is a new child). The
  parent's ``finish_task.lua`` fence makes a repeated report a no-op.
- Parent to child: a parent that stops (cancelled, failed, rolling back) cancels its active
  children; a parent rolling back undoes a completed child by rolling the child run back, and
  that compensation finishes when the child's rollback ends.
- The child's input is the task's input artifact (``single``) with the node's config and
  bindings on top, checked against the child pipeline's input schema.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dagworker.catalog import Catalog, split_ref
from dagworker.context import TaskContext
from dagworker.errors import PipelineError, PluginError, Problem, RunError, StoreError
from dagworker.pipeline import SUBPIPELINE_PLUGIN, Pipeline
from dagworker.plugin import registry
from dagworker.states import RunState
from dagworker.validation import check_input

if TYPE_CHECKING:
    from dagworker.orchestrator import Compiled, Orchestrator
    from dagworker.pipeline import Node

log = logging.getLogger("dagworker.subpipeline")

#: How deep sub-pipelines may nest (a guard on validation's walk, not a product limit).
MAX_DEPTH = 16


class ChildRunFailed(RunError):
    """Raised (as a task's error) when a sub-pipeline's child run did not complete."""


def _engine_only(ctx: TaskContext, **kwargs: Any) -> None:
    raise PluginError("the subpipeline plugin is run by the engine, not called")


def _engine_only_rollback(ctx: TaskContext) -> None:
    raise PluginError("the subpipeline compensation is run by the engine, not called")


builtin = registry.register(
    SUBPIPELINE_PLUGIN,
    _engine_only,
    description="Runs a registered pipeline as a child run (nodes with `pipeline:`).",
)
# A child run that completed is undone by rolling it back: a parent rolls its children back.
builtin.rollback(_engine_only_rollback)


def child_id(run_id: str, slug: str, index: int, attempt: int) -> str:
    return f"{run_id}.{slug}.{index}.{attempt}"


# -- validation --------------------------------------------------------------------------------

Resolve = Callable[[str], Pipeline]


def problems(pipeline: Pipeline, resolve: Resolve | None) -> list[Problem]:
    """Sub-pipeline references that do not resolve, and cycles across pipelines."""
    out: list[Problem] = []
    for node in pipeline.nodes:
        if node.pipeline is None:
            continue
        where = f"node {node.slug!r}"
        if resolve is None:
            out.append(
                Problem(
                    where,
                    f"pipeline {node.pipeline!r}: sub-pipelines name registered pipelines; "
                    "validate and run through a Client of the deployment",
                )
            )
            continue
        try:
            child = resolve(node.pipeline)
        except PipelineError as exc:
            out.append(Problem(where, f"pipeline: {exc}"))
            continue
        cycle = _cycle(child, [pipeline.name], resolve)
        if cycle:
            path = " -> ".join(cycle)
            out.append(Problem(where, f"pipeline: cycle across pipelines: {path}"))
    return out


def _cycle(pipeline: Pipeline, path: list[str], resolve: Resolve) -> list[str] | None:
    if pipeline.name in path:
        return [*path, pipeline.name]
    if len(path) >= MAX_DEPTH:
        return [*path, pipeline.name, "..."]
    for node in pipeline.nodes:
        if node.pipeline is None:
            continue
        try:
            child = resolve(node.pipeline)
        except PipelineError:
            continue  # reported when that pipeline itself is validated
        found = _cycle(child, [*path, pipeline.name], resolve)
        if found:
            return found
    return None


def resolver(catalog: Catalog) -> Resolve:
    def resolve(ref: str) -> Pipeline:
        return catalog.get(*split_ref(ref))

    return resolve


def pin(pipeline: Pipeline, resolve: Resolve) -> Pipeline:
    """Name each sub-pipeline by its exact version, so every child of a run runs the same."""
    nodes = []
    for node in pipeline.nodes:
        if node.pipeline is not None and "@" not in node.pipeline:
            child = resolve(node.pipeline)
            node = node.model_copy(update={"pipeline": f"{child.name}@{child.version}"})
        nodes.append(node)
    return pipeline.model_copy(update={"nodes": nodes})


# -- running -----------------------------------------------------------------------------------


def start_child(
    orch: Orchestrator,
    c: Compiled,
    node: Node,
    index: int,
    attempt: int,
    ctx: TaskContext,
    kwargs: dict[str, Any],
) -> str:
    """Start this task's child run (once); the task completes when the child ends."""
    store = orch.store
    cid = child_id(c.run_id, node.slug, index, attempt)
    # Listed first, so a parent that stops now finds (and cancels) the child being started.
    store.r.sadd(store.keys.children(c.run_id), cid)
    if store.r.exists(store.keys.run(cid)):
        return "waiting"  # a redelivery: the child exists
    assert node.pipeline is not None
    child = Catalog(store.r, store.keys).get(*split_ref(node.pipeline))
    run_input = check_input(child, {**(ctx.artifact or {}), **kwargs})
    parent = json.dumps([c.run_id, node.slug, index, attempt])
    try:
        orch.start_run(child, run_input, run_id=cid, parent=parent)
    except StoreError:
        return "waiting"  # a concurrent delivery created it first
    log.info("run %s node %s task %s: child run %s started", c.run_id, node.slug, index, cid)
    return "waiting"


def _sink_outputs(orch: Orchestrator, run_id: str) -> Iterator[dict[str, Any]]:
    """A child's final artifacts: those of its completed sink nodes, in declaration order."""
    c = orch.compiled(run_id)
    states = orch.store.nodes(run_id)
    for slug in c.graph.order:
        if not c.graph.successors[slug] and states.get(slug) == "completed":
            for artifact in orch.store.iter_artifacts(run_id, slug):
                yield artifact.fields


def notify_parent(orch: Orchestrator, run_id: str, event: str) -> None:
    """A child run ended: complete or fail the parent task waiting on it (idempotent)."""
    from dagworker import execution

    store = orch.store
    run = store.run(run_id)
    if not run.get("parent"):
        return
    prun, slug, index, attempt = json.loads(run["parent"])
    if not store.run_exists(prun):
        # (a child retried on its own after its parent was deleted, DAGWORKER_RESULT_TTL)
        log.warning("child run %s %s: its parent run %s no longer exists", run_id, event, prun)
        return
    c = orch.compiled(prun)
    task = store.task(prun, slug, index)
    node = c.nodes[slug]
    if task.get("rb_state") == "running" and event in ("rolled_back", "rollback_failed"):
        # The parent was undoing this child (a compensation waiting on the child's rollback).
        ok = event == "rolled_back"
        error = "" if ok else f"child run {run_id} {event}: {run.get('error') or ''}"
        finish = store.finish_compensation(
            prun, slug, index, int(task.get("rb_attempt") or 1), ok, error
        )
        if finish.settle:
            orch.advance(prun)
        return
    if task.get("state") != "running" or int(task.get("attempt") or 0) != int(attempt):
        return  # the parent moved on (cancelled, retried): nothing waits for this child
    spec = json.loads(task.get("spec") or "{}")
    if event == RunState.COMPLETED.value:
        execution.finish_with_outputs(
            orch, c, node, index, attempt, spec, _sink_outputs(orch, run_id)
        )
    else:
        failure = ChildRunFailed(f"child run {run_id} {event}: {run.get('error') or ''}")
        execution.fail_task(orch, c, node, index, attempt, failure)


def stop_children(orch: Orchestrator, run_id: str) -> int:
    """Cancel the active child runs of a parent that stopped; returns how many."""
    from dagworker.control import cancel

    stopped = 0
    for cid in orch.store.r.smembers(orch.store.keys.children(run_id)):
        status = orch.store.r.hget(orch.store.keys.run(cid), "status")
        if status in (RunState.RUNNING.value, RunState.PAUSED.value):
            try:
                stopped += cancel(orch, cid)
            except RunError:
                continue  # it ended meanwhile
    return stopped


def compensate_child(orch: Orchestrator, run_id: str, slug: str, index: int, attempt: int) -> str:
    """Undo a completed child by rolling it back; the compensation ends when the child does."""
    from dagworker.rollback import request

    store = orch.store
    task = store.task(run_id, slug, index)
    cid = child_id(run_id, slug, index, int(task.get("attempt") or 1))
    state = store.r.hget(store.keys.run(cid), "status")
    if state == RunState.ROLLED_BACK.value:
        finish = store.finish_compensation(run_id, slug, index, attempt, True)
        if finish.settle:
            orch.advance(run_id)
        return "compensated"
    if state is None:
        finish = store.finish_compensation(run_id, slug, index, attempt, True)  # nothing ran
        if finish.settle:
            orch.advance(run_id)
        return "compensated"
    request(orch, cid)
    return "waiting"
