"""Running one delivery of a task attempt: decide whether to run, build the context, call the
plugin under its time limit, store its outputs, then record the outcome (or schedule a retry).

A failing plugin fails its task, never the worker: every exception a plugin raises becomes the
attempt's recorded error.
"""

from __future__ import annotations

import logging
import random
import secrets
import signal
import threading
import traceback as tb
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagworker import cache, handoff, subpipeline
from dagworker.artifact import Artifact, artifact_id
from dagworker.context import TaskContext
from dagworker.errors import DagworkerError, ExpressionEvalError, LimitExceeded, RunNotFound
from dagworker.faults import crash_point
from dagworker.metrics import recorder
from dagworker.pipeline import FanMode, Node, OnFailure, Retry
from dagworker.plugin import Plugin
from dagworker.states import RunState
from dagworker.store import INLINE_OUTPUTS, STAGE_CHUNK, TaskBegin, encode_artifact

if TYPE_CHECKING:
    from dagworker.orchestrator import Compiled, Orchestrator

log = logging.getLogger("dagworker.execution")


class TaskTimeout(DagworkerError):
    """Raised inside a plugin when its node's ``timeout_s`` runs out."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    jitter: bool = True

    @classmethod
    def for_compensation(cls, plugin: Plugin) -> RetryPolicy:
        """Compensations retry on their own policy: undoing matters more than doing."""
        if plugin.rollback_retry:
            return cls(**Retry(**plugin.rollback_retry).model_dump())
        return cls(max_attempts=3, backoff_s=1.0, max_backoff_s=30.0)

    @classmethod
    def for_node(cls, node: Node, plugin: Plugin | None) -> RetryPolicy:
        """The node's ``retry`` wins over the plugin's default; without either, one attempt."""
        if node.retry is not None:
            return cls(**node.retry.model_dump())
        if plugin is not None and plugin.retry:
            return cls(**Retry(**plugin.retry).model_dump())
        return cls()

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds before attempt ``attempt + 1``: exponential, capped, with "equal jitter"."""
        raw = float(min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1))))
        if not self.jitter:
            return raw
        return float(raw / 2 + (rng or random).uniform(0, raw / 2))


@contextmanager
def time_limit(seconds: float | None, node: str) -> Iterator[None]:
    """Raise TaskTimeout in the plugin after ``seconds`` (SIGALRM; main thread only).

    Celery's own soft limit does not exist in the solo pool, so dagworker sets its own timer;
    the hard ``time_limit`` given to Celery (prefork) still kills a plugin that swallows it.
    """
    usable = seconds and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TaskTimeout(f"node {node!r} timed out after {seconds:g}s (timeout_s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds or 0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _begin(orch: Orchestrator, run_id: str, start: Callable[[], TaskBegin]) -> TaskBegin | str:
    """Start a delivery; a string says it ends here ("missing", "duplicate")."""
    try:
        begin = start()
    except RunNotFound:
        return "missing"
    if begin.verdict == "finished":
        # Redelivered after its outcome was recorded: only make sure orchestration ran.
        orch.advance(run_id)
        return "duplicate"
    return begin


def execute(orch: Orchestrator, run_id: str, slug: str, index: int, attempt: int) -> str:
    """Run one delivery of a task attempt; returns what happened (for logs and tests)."""
    store = orch.store
    begin = _begin(
        orch,
        run_id,
        lambda: store.begin_task(
            run_id, slug, index, attempt, orch.hostname, want_run=run_id not in orch.cache
        ),
    )
    if isinstance(begin, str):
        return begin
    if begin.verdict in ("stale", "missing"):
        return begin.verdict
    if begin.verdict == "inactive":
        finish = store.finish_task(
            run_id, slug, index, attempt, "cancelled", error=f"run is {begin.state}"
        )
        if finish.settle:
            orch.advance(run_id, settling=slug)
        return "cancelled"
    c = orch.compiled(run_id, begin.epoch, begin.run)
    node = c.nodes[slug]
    plugin: Plugin | None = None
    try:
        if "err" in begin.spec:
            raise ExpressionEvalError(begin.spec["err"])
        plugin = orch.registry.get(node.plugin)
        ctx = _context(orch, c, node, index, attempt, begin.spec, begin.inputs)
        kwargs = {**node.config, **begin.spec.get("b", {})}
        if node.pipeline is not None:
            return subpipeline.start_child(orch, c, node, index, attempt, ctx, kwargs)
        timeout = node.timeout_s or plugin.timeout_s
        key, cached = _cached(orch, c, node, plugin, ctx, kwargs)
        fields: list[dict[str, Any]] = []
        with time_limit(timeout, slug):
            encoded, staged, count = _run_plugin(
                orch, c, node, plugin, ctx, kwargs, begin.spec, cached, fields
            )
        if key and cached is None and node.cache and staged is None:
            cache.save(store.r, key, fields, node.cache.ttl_s)
    except Exception as exc:  # a failing plugin fails its task, never the worker
        return _failed(orch, c, node, plugin, index, attempt, exc)
    return _completed(orch, c, slug, index, attempt, begin.spec, (encoded, staged, count), cached)


def _completed(
    orch: Orchestrator,
    c: Compiled,
    slug: str,
    index: int,
    attempt: int,
    spec: dict[str, Any],
    outputs: tuple[list[str], str | None, int],
    cached: list[dict[str, Any]] | None = None,
) -> str:
    """Record a completed attempt with its outputs (inline or staged), then orchestrate:
    in the same step when the successors can be handed off (``dagworker.handoff``)."""
    encoded, staged, count = outputs
    run_id = c.run_id
    handing = staged is None and handoff.eligible(orch, spec)
    # A handoff is an orchestrator pass (it settles the node): timed as one.
    with recorder.orchestrating() if handing else nullcontext():
        finish = orch.store.finish_task(
            run_id,
            slug,
            index,
            attempt,
            "completed",
            encoded_outputs=encoded,
            staged_key=staged,
            staged_count=count,
            handoff=_handoff(orch, c, slug, index, spec, encoded) if handing else None,
        )
    crash_point("after_finish", slug)
    if finish.ended:
        log.info("run %s completed", run_id)
        if not finish.hooks:
            recorder.run_finished(c.pipeline.name, RunState.COMPLETED.value)  # no hooks task
    if cached is not None and finish.verdict == "recorded":
        orch.store.record_cache_hit(run_id, slug, index)
    if finish.settle or finish.verdict == "duplicate":
        orch.advance(run_id, settling=slug if finish.settle else None)
    return "completed" if finish.verdict == "recorded" else finish.verdict


def _handoff(
    orch: Orchestrator,
    c: Compiled,
    slug: str,
    index: int,
    spec: dict[str, Any],
    encoded: list[str],
) -> handoff.Handoff | None:
    """The handoff plan; a planning bug must not lose the completion it rides on (the
    orchestrator's usual path then plans the same launch and reports what fails)."""
    try:
        return handoff.plan(orch, c, slug, index, spec, encoded)
    except Exception:
        log.exception(
            "run %s node %s: handoff not planned; the orchestrator settles", c.run_id, slug
        )
        return None


def finish_with_outputs(
    orch: Orchestrator,
    c: Compiled,
    node: Node,
    index: int,
    attempt: int,
    spec: Mapping[str, Any],
    outputs: Iterable[dict[str, Any]],
) -> str:
    """Complete a running task with outputs produced elsewhere (a sub-pipeline's child run):
    the same limits, origins and fenced recording as a plugin's own outputs."""
    plugin = orch.registry.get(node.plugin)
    ctx = TaskContext(c.run_id, c.pipeline.name, node.slug, index, attempt)
    try:
        produced = _run_plugin(orch, c, node, plugin, ctx, {}, spec, list(outputs))
    except Exception as exc:
        return _failed(orch, c, node, plugin, index, attempt, exc)
    return _completed(orch, c, node.slug, index, attempt, dict(spec), produced)


def fail_task(
    orch: Orchestrator, c: Compiled, node: Node, index: int, attempt: int, exc: BaseException
) -> str:
    """Fail a running task from outside its plugin (a sub-pipeline's child did not complete)."""
    return _failed(orch, c, node, orch.registry.get(node.plugin), index, attempt, exc)


def _failed(
    orch: Orchestrator,
    c: Compiled,
    node: Node,
    plugin: Plugin | None,
    index: int,
    attempt: int,
    exc: BaseException,
) -> str:
    error = str(exc) if isinstance(exc, TaskTimeout) else f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "SoftTimeLimitExceeded":
        error = f"node {node.slug!r} timed out (Celery soft time limit)"
    trace = tb.format_exc(limit=20)
    log.warning(
        "run %s node %s task %s attempt %s failed: %s", c.run_id, node.slug, index, attempt, error
    )
    policy = RetryPolicy.for_node(node, plugin)
    if attempt < policy.max_attempts and not isinstance(exc, ExpressionEvalError):
        delay = policy.delay(attempt)
        if orch.store.retry_task(c.run_id, node.slug, index, attempt, delay, error, trace):
            log.info(
                "run %s node %s task %s: attempt %d in %.2fs",
                c.run_id,
                node.slug,
                index,
                attempt + 1,
                delay,
            )
            return "retrying"
    finish = orch.store.finish_task(
        c.run_id, node.slug, index, attempt, "failed", error=error, traceback=trace
    )
    if finish.verdict == "recorded" and node.on_failure is OnFailure.FAIL_RUN and not finish.settle:
        orch.fail_fast(c.run_id, node.slug, f"task {index}: {error}")
    if finish.settle:
        orch.advance(c.run_id, settling=node.slug)
    return "failed"


def _context(
    orch: Orchestrator,
    c: Compiled,
    node: Node,
    index: int,
    attempt: int,
    spec: Mapping[str, Any],
    prefetched: Mapping[str, Artifact] | None = None,
) -> TaskContext:
    """``prefetched``: the inputs by id, when ``begin_task`` already read them."""
    wanted = spec.get("in", {})
    ids = [aid for dep in node.depends_on for aid in wanted.get(dep, [])]
    if prefetched is not None:
        fetched = dict(prefetched)
    elif ids:
        fetched = {a.id: a for a in orch.store.fetch_artifacts(c.run_id, ids)}
    else:
        fetched = {}
    inputs = {dep: [fetched[aid].fields for aid in wanted.get(dep, [])] for dep in node.depends_on}
    artifacts = [fetched[aid].fields for aid in ids]
    single = node.fan_mode is FanMode.SINGLE and len(artifacts) == 1
    return TaskContext(
        run_id=c.run_id,
        pipeline=c.pipeline.name,
        node=node.slug,
        task_index=index,
        attempt=attempt,
        origin=spec.get("o"),
        artifact=artifacts[0] if single else None,
        artifacts=artifacts,
        inputs=inputs,
        config=dict(node.config),
        input=c.run_input,
        repeat_index=int(spec.get("r", 0)),
        logger=logging.getLogger(f"dagworker.plugin.{node.plugin}"),
    )


def _cached(
    orch: Orchestrator,
    c: Compiled,
    node: Node,
    plugin: Plugin,
    ctx: TaskContext,
    kwargs: Mapping[str, Any],
) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The cache key of this task and the outputs cached under it (``cache:`` on the node)."""
    if node.cache is None:
        return None, None
    key = orch.store.keys.cache(cache.cache_key(plugin, kwargs, ctx))
    if c.no_cache:
        return key, None  # run anyway, and refresh the entry
    return key, cache.lookup(orch.store.r, key)


def _run_plugin(
    orch: Orchestrator,
    c: Compiled,
    node: Node,
    plugin: Plugin,
    ctx: TaskContext,
    kwargs: Mapping[str, Any],
    spec: Mapping[str, Any],
    cached: list[dict[str, Any]] | None = None,
    keep: list[dict[str, Any]] | None = None,
) -> tuple[list[str], str | None, int]:
    """Stream the plugin's outputs (or the cached ones): inline when few, else staged in
    chunks in Redis. ``keep`` collects the first outputs' fields, for the cache.

    Origins are assigned here, by the engine (DESIGN §4.3): a root task's artifacts are their
    own origin, an aggregate task's are broadcast (None), others inherit the task's origin.
    """
    store, settings = orch.store, orch.store.settings
    root = bool(spec.get("root"))
    origin = None if spec.get("agg") else spec.get("o")
    encoded: list[str] = []
    staged: str | None = None
    count = 0
    try:
        source = cached if cached is not None else plugin.iter_outputs(ctx, kwargs)
        for k, fields in enumerate(source):
            count = k + 1
            if keep is not None and count <= cache.MAX_CACHED_OUTPUTS:
                keep.append(fields)
            if count > settings.max_artifacts_per_task:
                raise LimitExceeded(
                    "DAGWORKER_MAX_ARTIFACTS_PER_TASK", count, settings.max_artifacts_per_task
                )
            item = encode_artifact(
                artifact_id(node.slug, ctx.task_index, k) if root else origin, fields
            )
            if len(item) > settings.max_artifact_bytes:
                raise LimitExceeded(
                    "DAGWORKER_MAX_ARTIFACT_BYTES", len(item), settings.max_artifact_bytes
                )
            encoded.append(item)
            if count > INLINE_OUTPUTS and len(encoded) >= STAGE_CHUNK:
                # Many outputs (a streamed fan-out): hold them in Redis, not in worker memory.
                staged = staged or store.keys.staging(
                    c.run_id, node.slug, ctx.task_index, secrets.token_hex(6)
                )
                store.stage_outputs(staged, encoded)
                encoded = []
        if count > INLINE_OUTPUTS:
            staged = staged or store.keys.staging(
                c.run_id, node.slug, ctx.task_index, secrets.token_hex(6)
            )
            store.stage_outputs(staged, encoded)
            return [], staged, count
    except BaseException:
        if staged:
            store.r.delete(staged)
        raise
    return encoded, None, count


def execute_compensation(
    orch: Orchestrator, run_id: str, slug: str, index: int, attempt: int
) -> str:
    """Run one delivery of a compensation attempt: the plugin's rollback for one task.

    The rollback gets the task's original inputs (as the plugin saw them), its outputs and the
    run's error. A failing rollback is retried on its own policy, then fails its node's
    compensation (the run ends ``rollback_failed``), never the worker.
    """
    store = orch.store
    begin = _begin(
        orch, run_id, lambda: store.begin_compensation(run_id, slug, index, attempt, orch.hostname)
    )
    if isinstance(begin, str):
        return begin
    if begin.verdict != "run":
        return begin.verdict
    c = orch.compiled(run_id)
    node = c.nodes[slug]
    plugin = orch.registry.get(node.plugin)
    if node.pipeline is not None:
        return subpipeline.compensate_child(orch, run_id, slug, index, attempt)
    try:
        ctx = _context(orch, c, node, index, attempt, begin.spec)
        ctx.outputs = [a.fields for a in store.task_outputs(run_id, slug, index)]
        run = store.run(run_id)
        ctx.error = run.get("cause") or run.get("error") or None
        with time_limit(node.timeout_s or plugin.timeout_s, slug):
            plugin.compensate(ctx)
    except Exception as exc:  # a failing rollback fails its compensation, never the worker
        error = f"{type(exc).__name__}: {exc}"
        trace = tb.format_exc(limit=20)
        log.warning(
            "run %s node %s task %s: compensation %d failed: %s",
            *(run_id, slug, index, attempt, error),
        )
        policy = RetryPolicy.for_compensation(plugin)
        if attempt < policy.max_attempts and store.retry_task(
            run_id, slug, index, attempt, policy.delay(attempt), error, trace, compensation=True
        ):
            return "retrying"
        finish = store.finish_compensation(run_id, slug, index, attempt, False, error, trace)
        outcome = "failed"
    else:
        finish = store.finish_compensation(run_id, slug, index, attempt, True)
        outcome = "compensated"
    if finish.settle:
        orch.advance(run_id)
    return outcome if finish.verdict == "recorded" else finish.verdict
