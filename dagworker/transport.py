"""kombu's Redis transport, keeping one client per channel for its own bookkeeping commands.

With ``acks_late`` and kombu's ack emulation (the Redis transport's redelivery of messages
whose worker died), every message costs the worker two more commands outside the consumer's
poll: recording it as unacknowledged on delivery and removing that record on the ack. kombu
sends each through ``Channel.conn_or_acquire``, which builds a new redis-py client object per
call, and building one copies redis-py's table of reply callbacks: a third of what ack
emulation cost a worker in a py-spy profile of a 3,000-link chain. The client is only a handle
on the channel's connection pool (redis-py clients are safe to share between threads: each
command takes a connection from the pool), so this channel keeps one per pool and builds a new
one only when kombu has replaced the pool (after a reconnect).

Installed for kombu's ``redis`` name (``redis://`` URLs) when a worker starts
(``worker_init``; prefork children inherit it), rather than named in ``broker_transport``: the
connection keeps the ``redis`` name, so ``Connection.as_uri()`` (the worker's banner, Flower's
broker page) still reads ``redis://``, and a broker URL given on the command line or in
``CELERY_BROKER_URL`` picks its transport by scheme as usual. Other processes (Flower, beat,
applications that submit runs) keep kombu's own. ``rediss://`` keeps kombu's transport too
(its TLS handling keys on that name).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis

TRANSPORT = "dagworker.transport:Transport"


class Channel(kombu_redis.Channel):
    _kept_client: Any = None
    _kept_pool: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._kept_client is None or self._kept_pool is not pool:
            self._kept_client = self._create_client()  # type: ignore[no-untyped-call]
            self._kept_pool = pool
        yield self._kept_client


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make kombu's ``redis`` transport name resolve to ``Transport`` in this process."""
    kombu.transport.TRANSPORT_ALIASES["redis"] = TRANSPORT
    kombu.transport._transport_cache.pop("redis", None)  # resolved before: resolve again
