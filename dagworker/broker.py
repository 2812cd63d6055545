"""Celery task messages written straight into kombu's Redis queues, a batch per round trip.

kombu's Redis transport keeps a queue as the list ``<global_keyprefix><queue>`` (priority 0;
other priorities get a ``<sep><priority>`` suffix) of JSON envelopes, and a worker pops from
its right end: ``LPUSH key m1 m2 ...`` keeps the batch's order. What ``encode`` builds is what
``send_task`` followed by kombu's ``Channel.basic_publish`` store for a dagworker task sent to a
direct queue (the anonymous exchange, routing key = queue name, which is also what kombu uses
to restore an unacknowledged message): a protocol-2 message, JSON body, base64 body encoding,
a fresh delivery tag. ``argsrepr``/``kwargsrepr`` are given, so nothing calls ``saferepr``.
``tests/unit/test_broker.py`` holds the format against the one Celery produces.

This module knows the wire format, not Celery: it imports neither Celery nor kombu.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from bisect import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: kombu's defaults for the Redis transport (``Channel.priority_steps`` and ``Channel.sep``).
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
#: The embed part of a protocol-2 body: dagworker never uses Celery's canvas.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def origin_name() -> str:
    """Who sent a message, the way Celery names a non-worker process (``gen<pid>@<host>``)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def encode(
    name: str,
    task_id: str,
    kwargs: Mapping[str, Any],
    *,
    queue: str,
    origin: str,
    time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    priority: int = 0,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """One message envelope, as kombu's Redis transport stores it; ``headers`` are added to
    Celery's own (custom headers reach the worker as ``task.request`` attributes)."""
    body = json.dumps([[], dict(kwargs), _EMBED], separators=(",", ":"))
    celery_headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [time_limit, None],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": "()",
        # What Flower shows: kwargs are str and int only, so repr is what saferepr would give.
        "kwargsrepr": repr(dict(kwargs)),
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        **(headers or {}),
    }
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": celery_headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)


@dataclass(frozen=True)
class RedisQueues:
    """Pushes envelopes into a kombu Redis broker's lists.

    ``shares_store``: the broker is the run store's Redis (same URL), so commands on run state
    can go in the same MULTI as the messages (a publish and its confirmation are then atomic).
    """

    client: Any  # redis.Redis
    global_keyprefix: str = ""
    priority_steps: tuple[int, ...] = PRIORITY_STEPS
    sep: str = PRIORITY_SEP
    shares_store: bool = False

    @classmethod
    def from_options(
        cls, client: Any, options: Mapping[str, Any], shares_store: bool
    ) -> RedisQueues:
        """From Celery's ``broker_transport_options`` (the keys kombu's Channel reads)."""
        return cls(
            client,
            str(options.get("global_keyprefix") or ""),
            tuple(options.get("priority_steps") or PRIORITY_STEPS),
            str(options.get("sep") or PRIORITY_SEP),
            shares_store,
        )

    def key(self, queue: str, priority: int = 0) -> str:
        # kombu's Channel._q_for_pri: the priority rounds down to a step; step 0 has no suffix.
        steps = self.priority_steps
        step = steps[bisect(steps, priority) - 1]
        name = f"{queue}{self.sep}{step}" if step else queue
        return self.global_keyprefix + name

    def push(
        self,
        batches: Mapping[str, Sequence[str]],
        confirm: Sequence[Sequence[Any]] = (),
    ) -> bool:
        """LPUSH each queue's envelopes, one round trip; ``confirm`` (store commands) ride
        along in the same MULTI when the broker is the store. True when they were applied."""
        atomic = self.shares_store and bool(confirm)
        pipe = self.client.pipeline(transaction=atomic)
        for key, envelopes in batches.items():
            if envelopes:
                pipe.lpush(key, *envelopes)
        if atomic:
            for command in confirm:
                pipe.execute_command(*command)
        pipe.execute()
        return atomic
