"""Celery tasks: one per plugin, named ``dagworker.plugin.<name>`` so Flower shows what ran.

A message carries only ``run``, ``node``, ``task`` and ``attempt`` (never the graph or the data);
its id is deterministic (``<run>:<node>:<task>:<attempt>``), so a republished message is
recognisably the same attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery import Celery, Task
from celery.exceptions import Reject

from dagworker.logs import task_context
from dagworker.metrics import TASKS_TOTAL, recorder
from dagworker.pipeline import Node
from dagworker.plugin import Plugin

log = logging.getLogger("dagworker.tasks")

PLUGIN_TASK_PREFIX = "dagworker.plugin."
ROLLBACK_TASK_PREFIX = "dagworker.rollback."
#: dagworker raises its own timeout inside the plugin at ``timeout_s`` (any pool whose tasks
#: run in a main thread: prefork, solo). Celery's hard limit, which kills the process (prefork
#: only), is set this much later, for a plugin that swallows the timeout.
HARD_LIMIT_FACTOR = 1.1
HARD_LIMIT_MIN_EXTRA_S = 5.0
#: Message header with the publish time (epoch seconds): the worker measures queue wait with it.
SENT_HEADER = "dagworker_sent"
#: Outcomes of a delivery in which the plugin ran (the others are duplicates and no-ops).
RAN = frozenset({"completed", "failed", "retrying"})
#: A delivery that cannot reach the run-state Redis waits this long before handing its message
#: back, so that a Redis that is down does not turn redelivery into a busy loop.
STATE_DOWN_PAUSE_S = 1.0

T = TypeVar("T")


def requeue_if_state_unreachable(what: str, call: Callable[[], T]) -> T:
    """Run ``call``; if run state in Redis cannot be reached, requeue the message instead.

    With ``acks_late`` Celery acknowledges a task that raised, and the message is gone while the
    task is still ``queued`` or ``running`` in the run state: nothing would ever finish it (the
    reconciler repairs outbox, launches and settlements, not running tasks). Requeueing keeps the
    message; the next delivery repeats only fenced steps (``begin_task`` / ``finish_task``), at
    worst running the plugin again (at-least-once). When the broker is that same Redis the reject
    fails too, and the unacknowledged message comes back after the visibility timeout.
    """
    try:
        return call()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("%s: run state unreachable (%s); message requeued", what, exc)
        time.sleep(STATE_DOWN_PAUSE_S)
        raise Reject(str(exc), requeue=True) from exc


def task_id(run_id: str, node: str, index: int, attempt: int) -> str:
    return f"{run_id}:{node}:{index}:{attempt}"


def task_name(plugin_name: str) -> str:
    return PLUGIN_TASK_PREFIX + plugin_name


def compensation_id(run_id: str, node: str, index: int, attempt: int) -> str:
    return f"{run_id}:{node}:{index}:rb{attempt}"


class CeleryPublisher:
    """Publishes task messages through a Celery app, one producer connection per batch."""

    def __init__(self, app: Celery, default_queue: str) -> None:
        self.app = app
        self.default_queue = default_queue

    def publish_hooks(self, run_id: str, event: str) -> None:
        self.app.send_task(
            HOOKS_TASK,
            kwargs={"run": run_id, "event": event},
            task_id=f"{run_id}:hooks:{event}",
            queue=self.default_queue,
            ignore_result=True,
        )

    def publish(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> None:
        self._send(run_id, node, plugin, tasks, task_name(plugin.name), task_id)

    def publish_compensations(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> None:
        name = ROLLBACK_TASK_PREFIX + plugin.name
        self._send(run_id, node, plugin, tasks, name, compensation_id)

    def _send(
        self,
        run_id: str,
        node: Node,
        plugin: Plugin,
        tasks: list[tuple[int, int]],
        name: str,
        make_id: Any,
    ) -> None:
        queue = node.queue or plugin.queue or self.default_queue
        timeout = node.timeout_s or plugin.timeout_s
        limits: dict[str, Any] = {}
        if timeout:
            limits = {
                "time_limit": max(timeout * HARD_LIMIT_FACTOR, timeout + HARD_LIMIT_MIN_EXTRA_S)
            }
        headers = {SENT_HEADER: time.time()}
        with self.app.producer_or_acquire() as producer:
            for index, attempt in tasks:
                self.app.send_task(
                    name,
                    kwargs={"run": run_id, "node": node.slug, "task": index, "attempt": attempt},
                    task_id=make_id(run_id, node.slug, index, attempt),
                    queue=queue,
                    producer=producer,
                    ignore_result=True,
                    headers=headers,
                    **limits,
                )


HOOKS_TASK = "dagworker.hooks"


def register_hooks_task(app: Celery) -> Task:
    """The task that runs terminal-state hooks on a worker, once per run and event."""
    if HOOKS_TASK in app.tasks:
        return app.tasks[HOOKS_TASK]

    def run_hooks(run: str, event: str) -> int:
        from dagworker.hooks import call_hooks
        from dagworker.status import read_status
        from dagworker.worker import orchestrator

        def once() -> int:
            from dagworker.subpipeline import notify_parent

            store = orchestrator().store
            # A child run reports to its parent first, before the once-only claim: the report
            # is idempotent (fenced), so a crash right after the claim loses nothing.
            notify_parent(orchestrator(), run, event)
            if not store.claim_hooks(run, event):
                return 0  # already called (a duplicate delivery or schedule)
            # The run may have moved on since it ended (a rollback on request): hooks get the
            # state they were scheduled for.
            status = read_status(store, run).model_copy(update={"status": event})
            recorder.run_finished(status.pipeline, event)  # once per run and event
            return call_hooks(event, status)

        return requeue_if_state_unreachable(f"hooks {run} {event}", once)

    registered: Task = app.task(name=HOOKS_TASK, ignore_result=True, acks_late=True)(run_hooks)
    return registered


def register_plugin_task(app: Celery, plugin: Plugin) -> Task:
    """Register the Celery task that runs ``plugin``; idempotent per app."""
    name = task_name(plugin.name)
    if name in app.tasks:
        return app.tasks[name]

    def run_plugin(self: Task, run: str, node: str, task: int, attempt: int) -> str:
        from dagworker.worker import orchestrator  # the worker's own, built once per process

        started, clock = time.time(), time.perf_counter()
        recorder.take_orchestration_time()
        with task_context(run, node, int(task), int(attempt)):
            outcome = requeue_if_state_unreachable(
                f"run {run} node {node} task {task} attempt {attempt}",
                lambda: orchestrator().execute(run, node, int(task), int(attempt)),
            )
        if outcome in RAN:
            request = self.request
            sent = request.get(SENT_HEADER)
            recorder.task_finished(
                plugin.name,
                outcome,
                time.perf_counter() - clock - recorder.take_orchestration_time(),
                str((request.delivery_info or {}).get("routing_key") or ""),
                started - float(sent) if sent else None,
            )
        else:
            recorder.count(TASKS_TOTAL, plugin.name, outcome)
        return outcome

    run_plugin.__name__ = run_plugin.__qualname__ = f"plugin_{plugin.name}"
    run_plugin.__doc__ = plugin.description or f"Runs plugin {plugin.name!r}."
    registered: Task = app.task(name=name, ignore_result=True, acks_late=True, bind=True)(
        run_plugin
    )
    if plugin.rollback_func is not None:
        register_rollback_task(app, plugin)
    return registered


def register_rollback_task(app: Celery, plugin: Plugin) -> Task:
    """The Celery task that runs ``plugin``'s compensation: ``dagworker.rollback.<name>``."""
    name = ROLLBACK_TASK_PREFIX + plugin.name
    if name in app.tasks:
        return app.tasks[name]

    def run_rollback(run: str, node: str, task: int, attempt: int) -> str:
        from dagworker.worker import orchestrator

        with task_context(run, node, int(task), int(attempt)):
            return requeue_if_state_unreachable(
                f"run {run} node {node} task {task} compensation {attempt}",
                lambda: orchestrator().compensate(run, node, int(task), int(attempt)),
            )

    run_rollback.__name__ = run_rollback.__qualname__ = f"rollback_{plugin.name}"
    run_rollback.__doc__ = f"Compensates tasks of plugin {plugin.name!r}."
    registered: Task = app.task(name=name, ignore_result=True, acks_late=True)(run_rollback)
    return registered
