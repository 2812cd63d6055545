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
import threading
import time
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from celery import Celery, signals

from dagworker.errors import PluginLoadError
from dagworker.orchestrator import Orchestrator
from dagworker.plugin import registry
from dagworker.reconciler import publish_due, try_reconcile
from dagworker.settings import Settings
from dagworker.store import Store
from dagworker.tasks import CeleryPublisher, register_hooks_task, register_plugin_task

log = logging.getLogger("dagworker.worker")

ENTRY_POINT_GROUP = "dagworker.plugins"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.effective_broker_url,
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
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }


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


@cache
def orchestrator() -> Orchestrator:
    """This process's orchestrator (one Redis pool, one run cache), built on first use."""
    store = Store.from_settings(settings)
    return Orchestrator(store, CeleryPublisher.for_settings(app, settings, store.r), registry)


def register_tasks() -> None:
    register_hooks_task(app)
    for plug in registry.all():
        register_plugin_task(app, plug)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _on_worker_init(**_: Any) -> None:
    modules = load_plugins(settings)
    register_tasks()
    log.info("dagworker: plugins %s from %s", registry.names(), modules)


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
