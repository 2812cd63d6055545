"""The Celery app that ``celery -A dagworker worker`` starts, with the recommended settings.

Reliability settings (DESIGN §6): JSON only; ``acks_late`` with reject-on-worker-lost so a task
whose worker dies is redelivered; prefetch 1 so a dying worker holds at most one message; a
visibility timeout above the longest time limit (a message not acknowledged within it is
redelivered, so a shorter one duplicates long tasks); events on for Flower
(``DAGWORKER_TASK_EVENTS=0`` turns them off); no result backend (dagworker's own state in Redis
is the record).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import ssl
import threading
import time
from functools import cache
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery, signals

from dagworker import (
    logs,
    subpipeline,  # noqa: F401  (registers the built-in subpipeline plugin)
    transport,
)
from dagworker.client import launch
from dagworker.errors import PluginLoadError
from dagworker.metrics import recorder
from dagworker.orchestrator import Orchestrator
from dagworker.plugin import registry
from dagworker.reconciler import publish_due, try_reconcile
from dagworker.schedules import Scheduler
from dagworker.settings import Settings
from dagworker.store import Store
from dagworker.tasks import CeleryPublisher, register_hooks_task, register_plugin_task

log = logging.getLogger("dagworker.worker")

ENTRY_POINT_GROUP = "dagworker.plugins"


def broker_use_ssl(url: str) -> dict[str, Any] | bool:
    """TLS options for a ``rediss://`` broker: verify the server unless the URL says otherwise.

    kombu, given a ``rediss://`` URL without ``ssl_*`` query parameters, only logs a warning and
    connects with ``CERT_NONE`` (no certificate check, open to a man in the middle), whereas
    redis-py, which dagworker uses for run state, verifies by default. The broker carries the
    same deployment's traffic, so it gets the same default: ``CERT_REQUIRED`` against the
    system CAs. ``ssl_*`` parameters in the URL (``ssl_cert_reqs``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``) are left to kombu, which reads them itself and lets them
    override this.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return False
    if any(key.startswith("ssl_") for key, _ in parse_qsl(parts.query)):
        return {}  # kombu takes them from the URL (they win over broker_use_ssl)
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.effective_broker_url,
        "broker_use_ssl": broker_use_ssl(settings.effective_broker_url),
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # global_keyprefix puts kombu's own keys (queues, unacked, bindings) under the
        # deployment's prefix too, so two deployments can share one Redis.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "global_keyprefix": f"{settings.key_prefix}:kombu:",
            # kombu sweeps for messages whose worker died every interval x throttle seconds
            # (100 s by default); sweep in step with the visibility timeout instead, so a
            # crashed task is redelivered soon after the timeout.
            "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout / 4))),
            "unacked_restore_throttle": 1,
            # The sweep runs under a Redis mutex that kombu holds for up to 300 s. A worker
            # SIGKILLed mid-sweep leaves it held, and no message of a dead worker is
            # redelivered until it expires: runs stall for minutes (seen in `make chaos`).
            # A short expiry is safe, each restore is a WATCH/MULTI transaction.
            "unacked_mutex_expire": min(300, max(5, int(settings.visibility_timeout / 10))),
        },
        "broker_connection_retry_on_startup": True,
        # Flower needs them (the default); DAGWORKER_TASK_EVENTS=0 turns them off.
        "worker_send_task_events": settings.task_events,
        # "task-sent" events would double the cost of every publish (one PUBLISH per
        # message); Flower shows tasks from the workers' received/started/succeeded events.
        "task_send_sent_event": False,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        # every line logged while a task runs ends with run=... node=... task=... attempt=...
        "worker_log_format": logs.LOG_FORMAT,
        "worker_task_log_format": logs.TASK_LOG_FORMAT,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
        # `celery -A dagworker beat` sends only this tick; which schedules are due is decided
        # in Redis by the worker that runs it (dagworker.schedules), never by beat's own file.
        "beat_schedule": {
            "dagworker-schedules": {
                "task": TICK_TASK,
                "schedule": settings.schedule_interval,
                "options": {
                    "queue": settings.schedule_queue or settings.default_queue,
                    # a tick that waited this long is stale: the next one does its work
                    "expires": max(5.0, 5 * settings.schedule_interval),
                },
            }
        },
    }


#: The Celery task that fires due schedules (sent by `celery -A dagworker beat`).
TICK_TASK = "dagworker.schedule.tick"


def create_app(settings: Settings) -> Celery:
    app = Celery("dagworker", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def load_plugins(settings: Settings) -> list[str]:
    """Import plugin modules from settings and the ``dagworker.plugins`` entry-point group."""
    loaded = []
    for name in settings.plugins:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise PluginLoadError(f"DAGWORKER_PLUGINS: cannot import {name!r}: {exc}") from exc
        loaded.append(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"entry point {ep.name!r} ({ep.value}) in {ENTRY_POINT_GROUP}: {exc}"
            ) from exc
        loaded.append(ep.value)
    return loaded


settings = Settings.from_env()
app = create_app(settings)


class MeasuredOrchestrator(Orchestrator):
    """The worker's orchestrator: times each pass for ``dagworker_orchestration_seconds``."""

    def advance(self, run_id: str, *, settling: str | None = None) -> None:
        with recorder.orchestrating():
            super().advance(run_id, settling=settling)


@cache
def orchestrator() -> Orchestrator:
    """This process's orchestrator (one Redis pool, one run cache), built on first use."""
    store = Store.from_settings(settings)
    recorder.bind(store.r, store.keys.metrics)
    return MeasuredOrchestrator(
        store, CeleryPublisher.for_settings(app, settings, store.r), registry
    )


@cache
def scheduler() -> Scheduler:
    """This process's scheduler: starts runs through its orchestrator, validated against the
    plugins this worker loaded."""
    orch = orchestrator()
    return Scheduler(orch.store, lambda p, i: launch(orch, registry, p, i))


def tick() -> int:
    """Fire the due schedules of this deployment; the number of fire decisions taken."""
    return len(scheduler().tick())


def register_tasks() -> None:
    register_hooks_task(app)
    # Not acks_late: a tick lost with its worker is replaced by the next one within a second.
    app.task(name=TICK_TASK, ignore_result=True, acks_late=False)(tick)
    for plug in registry.all():
        register_plugin_task(app, plug)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _on_worker_init(**_: Any) -> None:
    transport.install()  # before the consumer's first connection; prefork children inherit it
    logs.install()
    modules = load_plugins(settings)
    register_tasks()
    log.info("dagworker: plugins %s from %s", registry.names(), modules)


@signals.after_setup_logger.connect  # type: ignore[untyped-decorator]
def _on_setup_logger(**_: Any) -> None:
    # beat logs with the worker's formats too, whose %(dagworker)s the record factory provides
    logs.install()


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    store = orchestrator().store
    name = getattr(sender, "hostname", None) or store.keys.prefix
    # Announce readiness (tests and `dagworker workers` wait on this instead of sleeping).
    store.r.hset(
        store.keys.workers,
        name,
        json.dumps(
            {
                "ready_at": time.time(),
                "pid": os.getpid(),
                "plugins": registry.names(),
            }
        ),
    )
    thread = threading.Thread(target=_background_loop, name="dagworker-background", daemon=True)
    thread.start()


_stop = threading.Event()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: Any) -> None:
    _stop.set()


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _flush_metrics(**_: Any) -> None:
    try:
        recorder.flush()
    except Exception:  # shutting down: losing the last second of metrics is acceptable
        log.warning("final metrics flush failed", exc_info=True)


#: How often a worker looks for retries whose backoff has elapsed.
DUE_POLL_S = 0.25


def _background_loop() -> None:
    """Send due retries every DUE_POLL_S; try a reconciler pass every reconcile interval."""
    interval = settings.reconcile_interval
    next_pass = time.monotonic() + interval
    while not _stop.wait(DUE_POLL_S):
        try:
            orch = orchestrator()
            publish_due(orch)
            if time.monotonic() >= next_pass:
                next_pass = time.monotonic() + interval
                try_reconcile(orch, interval)
        except Exception:  # keep the loop alive across Redis hiccups
            log.exception("background pass failed")
