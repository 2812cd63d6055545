"""The orchestrator (DESIGN §6): starts runs, executes task attempts, settles nodes, launches
successors and finalises runs.

The protocol, and the race each step closes:

1. A task's outcome is recorded by ``finish_task.lua`` without the run lock: counters commute,
   and the script's fence (state + attempt) makes a duplicated completion a no-op. The last task
   of a node puts the node in the run's *settle set*.
2. ``advance`` takes the per-run lock, reads the run, decides (``settlement.decide``) and commits
   with ``commit.lua``, which refuses if the run's version moved (a stale orchestrator whose lock
   expired writes nothing and starts over). Settling a node and claiming its successors happen
   in that one commit, so a node is claimed once.
3. A claimed node is *launched* outside the lock: its tasks are planned from immutable inputs,
   persisted batch by batch (``launch_batch.lua``, fenced by a cursor so a second launcher
   cannot create a task twice), then published. A crash between persist and publish leaves an
   outbox entry the reconciler republishes; a crash mid-launch leaves the node in the
   *launching* set the reconciler resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from dagworker import rollback, subpipeline
from dagworker.bindings import CompiledBinding, compile_bindings, evaluate, task_scope
from dagworker.errors import (
    DagworkerError,
    ExpressionError,
    LimitExceeded,
)
from dagworker.faults import crash_point
from dagworker.graph import Graph
from dagworker.handoff import SOLO, direct_launch, launch_limit
from dagworker.hooks import HOOK_EVENTS, listened
from dagworker.inputs import Inputs
from dagworker.metrics import recorder
from dagworker.pipeline import FanMode, Node, OnFailure, Pipeline
from dagworker.plugin import Plugin, Registry
from dagworker.routing import TaskPlan, iter_plans, repeated
from dagworker.settlement import Decision, NodeOutcome, decide
from dagworker.states import NodeState, RunState
from dagworker.store import LazyMap, Prefetched, Store, now

log = logging.getLogger("dagworker.orchestrator")

ACTIVE = frozenset({RunState.RUNNING.value, RunState.PAUSED.value})
#: A launch reading its inputs refreshes its liveness every this many artifacts.
HEARTBEAT_EVERY = 5_000
#: A task's input artifacts are copied into its spec when there are two to this many and their
#: JSON is at most this long (the spec, read when the task begins, then carries them).
EMBED_INPUTS_MAX = 64
EMBED_INPUTS_BYTES = 1_024


class Publisher(Protocol):
    """Sends task messages; the Celery implementation lives in ``dagworker.tasks``."""

    def publish(
        self,
        run_id: str,
        node: Node,
        plugin: Plugin,
        tasks: list[tuple[int, int]],
        confirm: Sequence[Sequence[Any]] = (),
    ) -> bool:
        """Send the tasks' messages. ``confirm``: Redis commands on the run store that the
        publisher may apply atomically with the send (when the broker is the store's Redis);
        returns True when it did, False when the caller must apply them itself."""
        ...

    def publish_hooks(self, run_id: str, event: str) -> None: ...

    def envelopes(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> tuple[str, list[str]] | None:
        """The queue key and messages for a store script to push (``dagworker.handoff``);
        None when the broker is not the run store's Redis."""
        ...

    def publish_compensations(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> None: ...


@dataclass(frozen=True)
class Compiled:
    """A run's pipeline parsed once per worker process (the stored JSON never changes; the run
    input may, on ``retry`` with a new input, which bumps the run's ``epoch``)."""

    run_id: str
    pipeline: Pipeline
    graph: Graph
    nodes: dict[str, Node]
    run_input: dict[str, Any]
    bindings: dict[str, tuple[CompiledBinding, ...]]
    policies: dict[str, OnFailure]
    epoch: str = ""
    no_cache: bool = False  # the run was started with --no-cache
    #: The stored pipeline JSON's fingerprint (``pipeline_fingerprint``; "" for a run created
    #: before runs had one): runs of the same pipeline share what is compiled from it.
    pipeline_fp: str = ""


class _RunCache:
    """Compiled runs by id, and the parts compiled from a pipeline alone by its fingerprint:
    a worker taking the first task of a run of a pipeline it has seen compiles nothing and
    reads nothing more than ``begin_task`` returned (the run's input and flags)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[str, Compiled] = OrderedDict()
        self._pipelines: OrderedDict[str, Compiled] = OrderedDict()

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._items

    def get(
        self,
        store: Store,
        run_id: str,
        epoch: str | None = None,
        known: Mapping[str, str] | None = None,
    ) -> Compiled:
        """The cached run; reloaded when the caller saw a newer ``epoch`` than the cache's.
        ``known``: the run's fields as ``begin_task`` returned them (``TaskBegin.run``), read
        with ``epoch``."""
        item = self._items.get(run_id)
        if item is not None and (epoch is None or epoch == item.epoch):
            self._items.move_to_end(run_id)
            return item
        template = self._pipelines.get(known["pipeline_fp"]) if known else None
        if known is not None and template is not None:
            self._pipelines.move_to_end(template.pipeline_fp)
            return self.put(
                replace(
                    template,
                    run_id=run_id,
                    run_input=json.loads(known.get("input") or "{}"),
                    epoch=epoch or "",
                    no_cache=known.get("no_cache") == "1",
                )
            )
        run, text = store.run_and_pipeline(run_id)
        pipeline = Pipeline.model_validate_json(text)
        return self.put(compile_run(run_id, pipeline, json.loads(run.get("input") or "{}"), run))

    def put(self, item: Compiled) -> Compiled:
        self._items[item.run_id] = item
        self._items.move_to_end(item.run_id)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        if item.pipeline_fp:
            self._pipelines[item.pipeline_fp] = item
            self._pipelines.move_to_end(item.pipeline_fp)
            if len(self._pipelines) > self.size:
                self._pipelines.popitem(last=False)
        return item


def compile_run(
    run_id: str, pipeline: Pipeline, run_input: dict[str, Any], run: Mapping[str, str]
) -> Compiled:
    graph = Graph.from_edges({n.slug: n.depends_on for n in pipeline.nodes})
    return Compiled(
        run_id,
        pipeline,
        graph,
        {n.slug: n for n in pipeline.nodes},
        run_input,
        {n.slug: compile_bindings(n) for n in pipeline.nodes},
        {n.slug: n.on_failure for n in pipeline.nodes},
        run.get("epoch") or "",
        run.get("no_cache") == "1",
        run.get("pipeline_fp") or "",
    )


def pipeline_fingerprint(pipeline_json: str) -> str:
    """A stored pipeline's identity: SHA-256 of its JSON (128 bits of it)."""
    return hashlib.sha256(pipeline_json.encode()).hexdigest()[:32]


def fingerprint(run_input: Mapping[str, Any]) -> str:
    """A run input's identity: SHA-256 of its canonical JSON (``retry`` compares it)."""
    canonical = json.dumps(dict(run_input), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def new_run_id() -> str:
    # Time-ordered and short enough to type: base-36 milliseconds + 6 random hex digits.
    millis = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while millis:
        millis, rem = divmod(millis, 36)
        out = digits[rem] + out
    return f"{out}-{secrets.token_hex(3)}"


class Orchestrator:
    def __init__(self, store: Store, publisher: Publisher, registry: Registry) -> None:
        self.store = store
        self.publisher = publisher
        self.registry = registry
        self.cache = _RunCache()
        self.hostname = socket.gethostname()
        #: Called inside the lock just before a commit; tests use it to stall an orchestrator
        #: past its lock's lifetime (the version check must then refuse its commit).
        self.before_commit: Callable[[str], None] | None = None

    def compiled(
        self, run_id: str, epoch: str | None = None, known: Mapping[str, str] | None = None
    ) -> Compiled:
        return self.cache.get(self.store, run_id, epoch, known)

    # -- starting ---------------------------------------------------------------------------

    def start_run(
        self,
        pipeline: Pipeline,
        run_input: Mapping[str, Any],
        run_id: str | None = None,
        reuse: tuple[str, Mapping[str, str]] | None = None,
        no_cache: bool = False,
        parent: str | None = None,
    ) -> str:
        """Persist a validated pipeline as a new run and launch its roots.

        ``reuse`` is ``(old run, {slug: state})``: those nodes are taken over settled, with
        their artifacts copied from the old run (``replay``); the others launch as their
        dependencies allow.
        """
        run_id = run_id or new_run_id()
        at = now()
        reused = dict(reuse[1]) if reuse else {}
        pipeline_json = pipeline.to_json()
        record = {
            "id": run_id,
            "pipeline": pipeline.name,
            "pipeline_version": "" if pipeline.version is None else str(pipeline.version),
            "status": RunState.RUNNING.value,
            "error": "",
            "created_at": at,
            "started_at": at,
            "finished_at": "",
            "input": json.dumps(dict(run_input)),
            "input_fp": fingerprint(run_input),
            "pipeline_fp": pipeline_fingerprint(pipeline_json),
            "nodes_total": len(pipeline.nodes),
            "nodes_settled": len(reused),
            "tasks_total": 0,
            "tasks_done": 0,
        }
        if no_cache:
            record["no_cache"] = "1"
        if parent:
            record["parent"] = parent  # JSON [run, node, task, attempt]: a sub-pipeline's child
        if reuse:
            record["replay_of"] = reuse[0]
            record["reused"] = json.dumps(sorted(reused))
        waits = {n.slug: sum(d not in reused for d in n.depends_on) for n in pipeline.nodes}
        ready = [n.slug for n in pipeline.nodes if n.slug not in reused and not waits[n.slug]]
        # (the input as workers will see it: decoded from the JSON stored with the run)
        c = compile_run(
            run_id,
            pipeline,
            json.loads(str(record["input"])),
            {"no_cache": "1" if no_cache else "", "pipeline_fp": str(record["pipeline_fp"])},
        )
        started = {"at": at, "status": RunState.RUNNING.value}
        k = self.store.keys
        if not reuse:
            direct = self._direct_roots(c, ready, at)
            if direct is not None:
                # One transaction: the run, its "running" event, the roots' tasks and messages.
                self.store.create_run(run_id, record, pipeline_json, waits, [started], direct)
                self.cache.put(c)
                return run_id
            # One transaction: the run, its "running" event and the roots' claims.
            claims = [op for slug in ready for op in self.claim_ops(run_id, slug, at)]
            self.store.create_run(run_id, record, pipeline_json, waits, [started], claims)
        else:
            # Copied first: a source deleted meanwhile (retention) refuses the replay before
            # the new run exists.
            copied, written = self.store.copy_nodes(reuse[0], run_id, sorted(reused))
            try:
                version = self.store.create_run(run_id, record, pipeline_json, waits, [started])
            except BaseException:
                if written:  # (no run owns them: neither listed nor ever deleted otherwise)
                    self.store.r.unlink(*written)
                raise
            ops: list[tuple[Any, ...]] = [
                (k.run(run_id), "hset", "tasks_total", copied),
                (k.run(run_id), "hset", "tasks_done", copied),
                *((k.nodes(run_id), "hset", slug, state) for slug, state in reused.items()),
            ]
            claims = [op for slug in ready for op in self.claim_ops(run_id, slug, at)]
            self.store.commit(run_id, version, ops + claims)
        # This process launches the roots: it knows the run without reading it back.
        self.cache.put(c)
        for slug in ready:
            self.launch(run_id, slug, epoch="", fresh=True)
        return run_id

    def _direct_roots(
        self, c: Compiled, ready: Sequence[str], at: float
    ) -> list[tuple[Any, ...]] | None:
        """The roots' claims, tasks and messages as ``create_run`` ops, so that creating the
        run also sends its first tasks (one transaction, no outbox); None when a root needs
        the usual launch (``handoff.direct_launch`` says when) or the roots together have more
        tasks than one launch batch."""
        k = self.store.keys
        ops: list[tuple[Any, ...]] = []
        pushes: dict[str, list[str]] = {}
        total = 0
        for slug in ready:
            node = c.nodes[slug]
            try:
                planned = direct_launch(self, c, node, repeated(node, [TaskPlan(0, None, {})]))
            except DagworkerError:
                return None  # the usual launch fails the node, naming the problem
            if planned is None:
                return None
            specs, (queue, envelopes) = planned
            total += len(specs)
            if total > launch_limit(self):
                return None  # more than one batch in the creation script: launched in batches
            ops += self.claim_ops(c.run_id, slug, at, launching=False)
            ops += [
                (
                    k.task(c.run_id, slug, i),
                    "hset",
                    *("state", "queued", "attempt", 1, "queued_at", at),
                    *("spec", json.dumps(spec, separators=(",", ":"))),
                )
                for i, spec in enumerate(specs)
            ]
            ops.append((k.node(c.run_id, slug), "hset", "tasks", len(specs), "launch_at", at))
            ops.append((k.node(c.run_id, slug), "hset", "launched", 1))
            ops.append((k.run(c.run_id), "hincrby", "tasks_total", len(specs)))
            pushes.setdefault(queue, []).extend(envelopes)
        return ops + [(queue, "lpush", *envelopes) for queue, envelopes in pushes.items()]

    def claim_ops(
        self, run_id: str, slug: str, at: float, *, count: bool = True, launching: bool = True
    ) -> list[tuple[Any, ...]]:
        """``launching``: the node enters the launching set (the reconciler resumes a launch
        that stops); False when its tasks are created in the same transaction."""
        k = self.store.keys
        ops: list[tuple[Any, ...]] = [
            (k.nodes(run_id), "hset", slug, NodeState.RUNNING.value),
            (k.node(run_id, slug), "hset", "started_at", at),
        ]
        if launching:
            ops.append((k.launching(run_id), "zadd", at, slug))
        if count:
            # running nodes are counted so a failing run knows when it has drained (§7)
            ops.append((k.run(run_id), "hincrby", "nodes_running", 1))
        return ops

    @staticmethod
    def hooks_needed(run: Mapping[str, str], state: RunState) -> bool:
        """Whether a run ending in ``state`` needs the hooks task: a parent run waits for this
        child, or a hook may listen (``hooks.listened``). A worker ending a run nobody listens
        to saves a task: a quarter of the tasks of a four-node run."""
        return bool(run.get("parent")) or listened(state.value)

    def compensable(self, c: Compiled) -> bool:
        """Whether any node's plugin has a rollback: then a failing run rolls back (§7)."""
        return any(
            node.plugin in self.registry and self.registry.get(node.plugin).rollback_func
            for node in c.nodes.values()
        )

    # -- launching ----------------------------------------------------------------------------

    def launch(
        self,
        run_id: str,
        slug: str,
        *,
        epoch: str | None = None,
        fresh: bool = False,
        inputs: Inputs | None = None,
    ) -> None:
        """Persist and publish a claimed node's tasks; safe to repeat (resumes at its cursor).

        ``epoch``: the run's input epoch when the caller just read it (with the claim).
        ``fresh``: the caller claimed the node in its own commit, so no task of it exists yet
        and its cursor is 0 without asking; should another launcher have started it anyway,
        ``launch_batch.lua``'s fence refuses our batch and tells us its cursor.
        ``inputs``: a reader shared with the other nodes claimed together (``Inputs``).
        """
        if epoch is None:
            epoch = self.store.r.hget(self.store.keys.run(run_id), "epoch") or ""
        c = self.compiled(run_id, epoch)
        node = c.nodes[slug]
        settings = self.store.settings
        try:
            plugin = self.registry.get(node.plugin)
        except DagworkerError as exc:
            self._fail_launch(run_id, slug, str(exc))
            return
        total = 0
        batch: list[str] = []
        first = cursor = 0 if fresh else self.store.launch_cursor(run_id, slug)
        try:
            for index, spec in enumerate(self._specs(c, node, inputs)):
                total = index + 1
                if total > settings.max_tasks_per_node:
                    raise LimitExceeded(
                        "DAGWORKER_MAX_TASKS_PER_NODE", total, settings.max_tasks_per_node
                    )
                if len(batch) >= settings.launch_batch:
                    # A full batch is sent once the next task exists: the last batch of a
                    # launch also closes it (launch_batch.lua), one script less per launch.
                    cursor = self._launch_batch(run_id, node, plugin, first, batch, False)[0]
                    batch = []
                if index < cursor:
                    continue
                if not batch:
                    first = index
                batch.append(spec)
        except DagworkerError as exc:
            if len(batch) >= settings.launch_batch:  # full batches were always sent
                self._launch_batch(run_id, node, plugin, first, batch, False)
            self._fail_launch(run_id, slug, str(exc))
            return
        closed = ready = False
        if batch:
            _, ready, closed = self._launch_batch(run_id, node, plugin, first, batch, True)
        if not closed:
            ready = self.store.finish_launch(run_id, slug, total)
        if ready:
            self.advance(run_id, settling=slug)

    def _launch_batch(
        self, run_id: str, node: Node, plugin: Plugin, first: int, specs: list[str], final: bool
    ) -> tuple[int, bool, bool]:
        """Persist one batch then publish it. Returns (the cursor after it, the node is ready
        to settle, this batch closed the launch)."""
        tasks = [(i, 1) for i in range(first, first + len(specs))]
        push = self.publisher.envelopes(run_id, node, plugin, tasks)
        applied, cursor, ready = self.store.launch_batch(
            run_id, node.slug, first, specs, now(), final, push
        )
        if applied and push is None:
            crash_point("before_publish", node.slug)
            self.publish(run_id, node, plugin, tasks)
        # else someone else (a reconciler resuming us, or we resuming them) persisted it
        return cursor, ready, applied and final

    def publish(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> None:
        """Send an outbox batch (``tasks`` from its first to its last index) and confirm it:
        in the same MULTI when the broker is the store's Redis, else right after."""
        first, last = tasks[0][0], tasks[-1][0]
        confirm = self.store.published_commands(run_id, node.slug, first, last)
        if not self.publisher.publish(run_id, node, plugin, tasks, confirm):
            self.store.published(run_id, node.slug, first, last)

    def _fail_launch(self, run_id: str, slug: str, error: str) -> None:
        """A node that cannot be launched (a limit, a binding failing on the data) fails.

        Batches already published still run and are recorded; the node settles as failed once
        they are done.
        """
        log.error("run %s node %s: launch failed: %s", run_id, slug, error)
        if self.store.fail_launch(run_id, slug, error):
            self.advance(run_id, settling=slug)

    def _specs(self, c: Compiled, node: Node, inputs: Inputs | None = None) -> Iterator[str]:
        """Each task's decided inputs, in launch order, as the JSON persisted with the task;
        a node's only task is marked ``solo`` (its completion may hand off)."""
        if not node.depends_on:
            plans: Iterable[TaskPlan] = [TaskPlan(index=0, origin=None, inputs={})]
        else:
            reader = inputs or Inputs(self.store, c.run_id, c.nodes)
            # Reading 100,000 inputs takes a while: tell the reconciler this launch is alive
            # (it resumes launches that stopped moving for the publish grace period).
            beat = partial(self.store.touch_launch, c.run_id, node.slug)
            plans = iter_plans(node, reader.of(node, beat, HEARTBEAT_EVERY))
        held: TaskPlan | None = None  # one plan behind: the first is solo if no second comes
        count = 0
        for plan in repeated(node, plans):
            if held is not None:
                yield json.dumps(self.spec(c, node, held), separators=(",", ":"))
            held, count = plan, count + 1
        if held is not None:
            solo = count == 1 and held.index == 0
            yield json.dumps(self.spec(c, node, held, solo=solo), separators=(",", ":"))

    def spec(self, c: Compiled, node: Node, plan: TaskPlan, solo: bool = False) -> dict[str, Any]:
        """One task's decided inputs (and bindings), as persisted with the task. ``solo``: it
        is its node's only task."""
        spec: dict[str, Any] = {"o": plan.origin}
        if not node.depends_on:
            spec["root"] = True
        else:
            spec["in"] = {dep: [a.id for a in arts] for dep, arts in plan.inputs.items() if arts}
            # Small inputs of a task with several, or of a node's only task, travel in its
            # spec: the task does not read them back, one command per input artifact less (the
            # artifacts of a settled node never change). Not for a single input of a task
            # among many: one read saved would not pay for the memory (a spec over 64 bytes
            # takes the task's hash out of Redis' compact encoding, about 700 bytes more per
            # task in a 100,000-task fan-out); one task per node can pay it.
            embedded = [[a.origin, a.fields] for arts in plan.inputs.values() for a in arts]
            if (1 if solo else 2) <= len(embedded) <= EMBED_INPUTS_MAX and (
                len(json.dumps(embedded, separators=(",", ":"))) <= EMBED_INPUTS_BYTES
            ):
                spec["a"] = embedded
        if node.fan_mode is FanMode.AGGREGATE:
            spec["agg"] = True
        if plan.repeat_index:
            spec["r"] = plan.repeat_index
        if c.bindings[node.slug]:
            fields = {dep: [a.fields for a in arts] for dep, arts in plan.inputs.items()}
            scope = task_scope(
                node, fields, c.run_input, c.run_id, c.pipeline.name, plan.index, plan.repeat_index
            )
            try:
                spec["b"] = evaluate(node, c.bindings[node.slug], scope)
            except ExpressionError as exc:
                # Decided once like any input: the task exists and fails with this error.
                spec["err"] = str(exc)
        if solo:
            spec[SOLO] = 1  # its completion may launch the successors (handoff)
        return spec

    # -- settling -----------------------------------------------------------------------------

    def advance(self, run_id: str, *, settling: str | None = None) -> None:
        """Settle what waits in the settle sets; claim and launch what became ready.

        ``settling``: the node ``finish_task`` or ``finish_launch`` just put in the settle
        set. The set is then not counted first, and what deciding that node needs is read
        with the lock (the usual case: it is the only node waiting).
        """
        backward = 0
        if not settling:
            forward, backward = self.store.settle_sizes(run_id)
            if not forward and not backward:
                return
            if not forward:
                rollback.advance(self, run_id)
                return
        drained, rolling_back = self._advance_forward(run_id, settling)
        if drained:
            rollback.start(self, run_id)
        # Compensations settle only while a run rolls back: only then is their set looked at.
        if backward or (rolling_back and self.store.settle_sizes(run_id)[1]):
            rollback.advance(self, run_id)

    def _advance_forward(self, run_id: str, hint: str | None) -> tuple[bool, bool]:
        """Settle nodes whose tasks are done. Returns (a run rolling back has now drained,
        the run is rolling back)."""
        store = self.store
        c = self.compiled(run_id)
        guess = [hint] if hint in c.nodes else []
        while True:
            # One round trip: the lock, the run (its version), the settle set and what
            # deciding the node we expect to find there needs.
            lock, run, pending, prefetched = store.lock_for_settle(
                run_id, self._near_fields(c, guess), guess
            )
            try:
                if not pending:
                    return False, run["status"] == RunState.ROLLING_BACK.value
                version = int(run.get("version") or 0)
                ops, decision, drained, known = self._decide(c, run, pending, prefetched)
                if self.before_commit is not None:
                    self.before_commit(run_id)
                # The claimed nodes' completed dependencies are read with the commit: the
                # launches that follow plan from them without another round trip.
                deps = dict.fromkeys(d for s in decision.claimed for d in c.nodes[s].depends_on)
                ahead = [d for d in deps if known.get(d) == NodeState.COMPLETED.value]
                result, replies = store.commit_and_read(run_id, version, ops, lock, ahead)
                if result >= 0:
                    break
            finally:
                lock.release()  # nothing to do when the commit released it
            log.info("run %s: state moved while deciding; deciding again", run_id)
        if decision.run_state is not None:
            log.info("run %s %s", run_id, decision.run_state.value)
            if decision.run_state.value in HOOK_EVENTS and not self.hooks_needed(
                run, decision.run_state
            ):
                # No hooks task will count it
                recorder.run_finished(run.get("pipeline") or "", decision.run_state.value)
            if decision.fail_fast:
                subpipeline.stop_children(self, run_id)
        epoch = run.get("epoch") or ""
        # The claimed nodes' dependencies were read and decided just now: their states are
        # known, and nodes claimed together (a layer) share the artifacts they read.
        inputs = Inputs(store, run_id, c.nodes, known)
        inputs.replies.update(replies)
        for i, slug in enumerate(decision.claimed):
            inputs.keep(d for s in decision.claimed[i:] for d in c.nodes[s].depends_on)
            self.launch(run_id, slug, epoch=epoch, fresh=True, inputs=inputs)
        rolling_back = decision.run_state is RunState.ROLLING_BACK or (
            decision.run_state is None and run["status"] == RunState.ROLLING_BACK.value
        )
        return drained, rolling_back

    @staticmethod
    def _near_fields(c: Compiled, settling: Iterable[str]) -> list[str]:
        """The node-state fields deciding ``settling`` reads: the neighbourhood of those nodes
        (their successors and the successors' other dependencies), states and wait counts."""
        near = set(settling)
        for slug in list(near):
            for succ in c.graph.successors[slug]:
                near.add(succ)
                near.update(c.graph.predecessors[succ])
        return [*near, *(f"{s}:wait" for s in near)]

    def _decide(
        self,
        c: Compiled,
        run: Mapping[str, str],
        pending: set[str],
        prefetched: Prefetched | None = None,
    ) -> tuple[list[tuple[Any, ...]], Decision, bool, dict[str, str]]:
        """The commit ops, the decision, whether a rolling-back run drained, and the node
        states as they will be after the commit (those read or decided)."""
        store, k = self.store, self.store.keys
        # Only the neighbourhood of the settling nodes is read (one HMGET, more only when a
        # skip cascades): the cost follows the work caused, not the size of the graph.
        raw, counters = store.decide_reads(
            c.run_id, self._near_fields(c, pending), sorted(pending), prefetched
        )
        states = LazyMap(raw, NodeState)
        waits = LazyMap(raw, int, suffix=":wait")
        outcomes = {
            s: NodeOutcome(
                int(v.get("tasks", 0)),
                int(v.get("completed", 0)),
                int(v.get("failed", 0)) + int(v.get("launch_failed", 0)),
                int(v.get("cancelled", 0)),
            )
            for s, v in counters.items()
        }
        errors = {s: v.get("error", "") for s, v in counters.items()}
        for s in outcomes:
            if outcomes[s].failed and not errors[s]:
                errors[s] = self._first_error(c.run_id, s, outcomes[s].tasks)
        decision = decide(
            c.graph,
            c.policies,
            states,
            waits,
            outcomes,
            RunState(run["status"]),
            int(run.get("nodes_settled") or 0),
            json.loads(run.get("failed_nodes") or "[]"),
            errors,
        )
        at = now()
        ops: list[tuple[Any, ...]] = [(k.settle(c.run_id), "srem", s) for s in pending]
        for slug, state in decision.states.items():
            ops.append((k.nodes(c.run_id), "hset", slug, state.value))
            if state is NodeState.RUNNING:
                ops += self.claim_ops(c.run_id, slug, at, count=False)[1:]
            else:
                ops.append((k.node(c.run_id, slug), "hset", "finished_at", at))

        if any(st is NodeState.FAILED for st in decision.states.values()):
            ops.append((k.run(c.run_id), "hset", "failed_nodes", json.dumps(decision.failed)))
        for slug, wait in decision.waits.items():
            ops.append((k.nodes(c.run_id), "hset", f"{slug}:wait", wait))
        if decision.settled:
            ops.append((k.run(c.run_id), "hincrby", "nodes_settled", decision.settled))
        running = int(run.get("nodes_running") or 0) - decision.ran + len(decision.claimed)
        if running != int(run.get("nodes_running") or 0):
            ops.append((k.run(c.run_id), "hset", "nodes_running", running))
        status = RunState(run["status"])
        if decision.run_state is RunState.FAILED and decision.fail_fast and self.compensable(c):
            # Undo instead of stopping: tasks still queued are cancelled on delivery, running
            # ones finish, and the compensations start once nothing runs (rollback.start).
            decision.run_state = RunState.ROLLING_BACK
            ops += [
                (k.run(c.run_id), "hset", "status", RunState.ROLLING_BACK.value),
                (k.run(c.run_id), "hset", "error", decision.error or ""),
                (k.run(c.run_id), "hset", "cause", decision.error or ""),
                (
                    k.events(c.run_id),
                    "rpush",
                    store.event_json(at, RunState.ROLLING_BACK, decision.error),
                ),
            ]
            status = RunState.ROLLING_BACK
        elif decision.run_state is not None:
            hooks = self.hooks_needed(run, decision.run_state)
            ops += store.end_ops(c.run_id, decision.run_state, at, decision.error, hooks)
        drained = status is RunState.ROLLING_BACK and running <= 0
        known = {s: v for s, v in raw.cache.items() if v is not None and ":" not in s}
        known.update({s: st.value for s, st in decision.states.items()})
        return ops, decision, drained, known

    def fail_fast(self, run_id: str, slug: str, error: str) -> None:
        """A task of a ``fail_run`` node failed for good: stop the run now, not when the node's
        other tasks are done (a 100,000-task node must not run to the end first). The node
        itself settles as failed later, once its remaining tasks finish or are cancelled."""
        store, k = self.store, self.store.keys
        c = self.compiled(run_id)
        message = f"node {slug!r} failed: {error}"
        while True:
            lock, run = store.lock_run(run_id)
            try:
                if run["status"] not in ACTIVE:
                    return
                at = now()
                ops: list[tuple[Any, ...]] = [(k.run(run_id), "hset", "cause", message)]
                if self.compensable(c):
                    ops += [
                        (k.run(run_id), "hset", "status", RunState.ROLLING_BACK.value),
                        (k.run(run_id), "hset", "error", message),
                        (
                            k.events(run_id),
                            "rpush",
                            store.event_json(at, RunState.ROLLING_BACK, message),
                        ),
                    ]
                else:
                    ops += store.end_ops(run_id, RunState.FAILED, at, message)
                if store.commit(run_id, int(run.get("version") or 0), ops, lock) >= 0:
                    log.info("run %s stopped: %s", run_id, message)
                    break
            finally:
                lock.release()
        subpipeline.stop_children(self, run_id)  # they stop too, so the run drains

    def _first_error(self, run_id: str, slug: str, tasks: int) -> str:
        for index in range(min(tasks, 50)):
            error = self.store.r.hget(self.store.keys.task(run_id, slug, index), "error")
            if error:
                return f"task {index}: {error}"
        return ""

    def execute(self, run_id: str, slug: str, index: int, attempt: int) -> str:
        """Run one delivery of a task attempt (see ``dagworker.execution``)."""
        from dagworker.execution import execute

        return execute(self, run_id, slug, index, attempt)

    def compensate(self, run_id: str, slug: str, index: int, attempt: int) -> str:
        """Run one delivery of a compensation attempt (see ``dagworker.execution``)."""
        from dagworker.execution import execute_compensation

        return execute_compensation(self, run_id, slug, index, attempt)
