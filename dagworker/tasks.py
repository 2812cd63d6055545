"""Celery tasks: one per plugin, named ``dagworker.plugin.<name>`` so Flower shows what ran.

A message carries only ``run``, ``node``, ``task`` and ``attempt`` (never the graph or the data);
its id is deterministic (``<run>:<node>:<task>:<attempt>``), so a republished message is
recognisably the same attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from celery import Celery, Task, signals
from celery.exceptions import Reject

from dagworker.broker import RedisQueues, encode, origin_name
from dagworker.logs import task_context
from dagworker.metrics import TASKS_TOTAL, recorder
from dagworker.pipeline import Node
from dagworker.plugin import Plugin
from dagworker.settings import Settings
from dagworker.store import connect

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
    """Publishes task messages through a Celery app.

    With a Redis broker (``queues``), a batch is written straight into kombu's queue lists: one
    round trip for 500 messages instead of one ``send_task`` each (``dagworker.broker``). Other
    brokers (``amqp://``) go through ``send_task``, one producer connection per batch, and so
    does everything while a receiver is connected to Celery's ``before_task_publish`` or
    ``after_task_publish`` signals (only ``send_task`` sends them).
    """

    def __init__(self, app: Celery, default_queue: str, queues: RedisQueues | None = None) -> None:
        self.app = app
        self.default_queue = default_queue
        self.queues = queues
        self.origin = origin_name()

    @classmethod
    def for_settings(cls, app: Celery, settings: Settings, store_client: Any) -> CeleryPublisher:
        """The publisher a worker or client uses: batched when the broker is a Redis."""
        url = settings.effective_broker_url
        if urlsplit(url).scheme not in ("redis", "rediss") or app.conf.broker_use_ssl:
            return cls(app, settings.default_queue)
        shared = url == settings.redis_url
        client = store_client if shared else connect(url)
        options = app.conf.broker_transport_options or {}
        return cls(app, settings.default_queue, RedisQueues.from_options(client, options, shared))

    def publish_hooks(self, run_id: str, event: str) -> None:
        self._send(
            HOOKS_TASK,
            self.default_queue,
            [(f"{run_id}:hooks:{event}", {"run": run_id, "event": event})],
            None,
        )

    def publish(
        self,
        run_id: str,
        node: Node,
        plugin: Plugin,
        tasks: list[tuple[int, int]],
        confirm: Sequence[Sequence[Any]] = (),
    ) -> bool:
        return self._send_tasks(
            run_id, node, plugin, tasks, task_name(plugin.name), task_id, confirm
        )

    def publish_compensations(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> None:
        name = ROLLBACK_TASK_PREFIX + plugin.name
        self._send_tasks(run_id, node, plugin, tasks, name, compensation_id, ())

    def _send_tasks(
        self,
        run_id: str,
        node: Node,
        plugin: Plugin,
        tasks: list[tuple[int, int]],
        name: str,
        make_id: Callable[[str, str, int, int], str],
        confirm: Sequence[Sequence[Any]],
    ) -> bool:
        queue, messages, limit = self._messages(run_id, node, plugin, tasks, make_id)
        return self._send(name, queue, messages, limit, confirm)

    def _messages(
        self,
        run_id: str,
        node: Node,
        plugin: Plugin,
        tasks: list[tuple[int, int]],
        make_id: Callable[[str, str, int, int], str],
    ) -> tuple[str, list[tuple[str, dict[str, Any]]], float | None]:
        """The queue, ``(task id, kwargs)`` messages and hard time limit of a node's tasks."""
        queue = node.queue or plugin.queue or self.default_queue
        timeout = node.timeout_s or plugin.timeout_s
        limit = None
        if timeout:
            limit = max(timeout * HARD_LIMIT_FACTOR, timeout + HARD_LIMIT_MIN_EXTRA_S)
        messages = [
            (
                make_id(run_id, node.slug, index, attempt),
                {"run": run_id, "node": node.slug, "task": index, "attempt": attempt},
            )
            for index, attempt in tasks
        ]
        return queue, messages, limit

    def envelopes(
        self, run_id: str, node: Node, plugin: Plugin, tasks: list[tuple[int, int]]
    ) -> tuple[str, list[str]] | None:
        """The queue key and message envelopes of a node's tasks, for a script on the run
        store to push itself (``dagworker.handoff``); None when messages cannot be written
        there (another broker, or publish signals that only ``send_task`` sends)."""
        if self.queues is None or not self.queues.shares_store or _publish_signals_connected():
            return None
        queue, messages, limit = self._messages(run_id, node, plugin, tasks, task_id)
        name = task_name(plugin.name)
        return self.queues.key(queue), self._encode(name, queue, messages, limit)

    def _send(
        self,
        name: str,
        queue: str,
        messages: list[tuple[str, dict[str, Any]]],
        time_limit: float | None,
        confirm: Sequence[Sequence[Any]] = (),
    ) -> bool:
        """Send ``(task id, kwargs)`` messages; True when ``confirm`` was applied with them."""
        headers = {SENT_HEADER: time.time()}
        if self.queues is None or _publish_signals_connected():
            limits = {} if time_limit is None else {"time_limit": time_limit}
            with self.app.producer_or_acquire() as producer:
                for tid, kwargs in messages:
                    self.app.send_task(
                        name,
                        kwargs=kwargs,
                        task_id=tid,
                        queue=queue,
                        producer=producer,
                        ignore_result=True,
                        headers=headers,
                        **limits,
                    )
            return False
        envelopes = self._encode(name, queue, messages, time_limit, headers)
        return self.queues.push({self.queues.key(queue): envelopes}, confirm)

    def _encode(
        self,
        name: str,
        queue: str,
        messages: list[tuple[str, dict[str, Any]]],
        time_limit: float | None,
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        # Like send_task from inside a task: the messages name the task that caused them.
        parent = self.app.current_worker_task
        parent_id = parent.request.id if parent else None
        root_id = (parent.request.root_id or parent_id) if parent else None
        headers = headers or {SENT_HEADER: time.time()}
        return [
            encode(
                name,
                tid,
                kwargs,
                queue=queue,
                origin=self.origin,
                time_limit=time_limit,
                root_id=root_id,
                parent_id=parent_id,
                headers=headers,
            )
            for tid, kwargs in messages
        ]


def _publish_signals_connected() -> bool:
    """Someone listens to Celery's publish signals (tracing, auditing): only ``send_task``
    sends them, so the batched path steps aside."""
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


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
