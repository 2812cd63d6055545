"""The native Celery canvas app the bench compares dagworker with.

Same reliability settings as dagworker's workers (JSON only, acks_late, prefetch 1, task events
on, no task-sent events) so the difference measured is the orchestration model, not the
settings. Chords need a result backend: Redis, which is what canvas really costs. Workers start
with ``celery -A bench.canvas_app worker --pool=solo``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery, signals

from bench import env


def config(url: str, prefix: str) -> dict[str, Any]:
    """The app's settings for a Redis URL (with the bench's DB) and the bench's key prefix."""
    canvas = env.canvas_prefix(prefix)
    return dict(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=False,
        task_default_queue=env.CANVAS_QUEUE,
        # Every key (kombu's queues and bindings, results, chord counters) under the bench prefix,
        # so cleanup is one prefix scan and other users of the Redis are never touched.
        broker_transport_options={"global_keyprefix": f"{canvas}:kombu:"},
        result_backend_transport_options={"global_keyprefix": f"{canvas}:res:"},
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        dwbench_prefix=canvas,
    )


app = Celery("dwbench_canvas", set_as_current=False)
# Workers are configured by their environment; the bench process calls ``configure`` before
# the first message (the app connects lazily, so the later settings win).
app.conf.update(
    config(
        os.environ.get(env.CANVAS_REDIS_URL, "redis://127.0.0.1:6379/0"),
        os.environ.get(env.PREFIX, "dwbench"),
    )
)


def configure(url: str, prefix: str) -> None:
    app.conf.update(config(url, prefix))


@app.task(name="bench.step")
def step(prev: Any = None, k: int = 0) -> dict[str, int]:
    """A no-op link: takes the previous result (chain) and returns a small JSON value."""
    return {"k": k}


@app.task(name="bench.agg")
def agg(results: list[Any] | None = None, k: int = 0) -> dict[str, int]:
    """A no-op join: receives the header's results (chord body)."""
    return {"n": len(results or []), "k": k}


@signals.worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    # Readiness in Redis, like dagworker's workers, so the bench waits on an event, not a sleep.
    client = app.backend.client
    name = getattr(sender, "hostname", "canvas")
    client.hset(
        f"{app.conf.dwbench_prefix}:workers",
        name,
        json.dumps({"pid": os.getpid(), "at": time.time()}),
    )
