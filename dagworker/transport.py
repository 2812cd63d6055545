# mypy: disable-error-code="no-untyped-call"
# (kombu is untyped: every call into the classes this module extends is one)
"""kombu's Redis transport with cheaper ack emulation bookkeeping: one command per delivery record
and one per ack instead of four each, and one client per channel for those commands.

kombu's Redis transport redelivers a dead worker's message (ack emulation, ``acks_late``): on
delivery it records the message as unacknowledged (``MULTI``, ``ZADD`` of the delivery tag to
an index scored by time, ``HSET`` of the message into a hash, ``EXEC``) and on the ack removes
both (``MULTI ZREM HDEL EXEC``). Eight commands per task, of a chain link's 30 in the bench.
Here a delivery is one field of the same hash, named ``<tag>@<delivery time>``, holding the
same value kombu stores (``[message, exchange, routing key]``): recording it is one ``HSET``,
the ack one ``HDEL``. The sweep that restores deliveries older than the visibility timeout
reads the field names (``HKEYS``: a few per worker in flight) and restores the old ones in a
transaction watching the hash, as kombu does. What kombu guarantees is unchanged: a message is
restored once, after the visibility timeout, on a requeued reject and at a worker's shutdown.
Records in kombu's own format (a worker of an earlier release: the tag in the index) are
restored by kombu's code, in the same sweep.

kombu also sends each of those commands through ``Channel.conn_or_acquire``, which builds a new
redis-py client object per call, and building one copies redis-py's table of reply callbacks:
a third of what ack emulation cost a worker in a py-spy profile of a 3,000-link chain. The
client is only a handle on the channel's connection pool (redis-py clients are safe to share
between threads: each command takes a connection from the pool), so this channel keeps one per
pool and builds a new one only when kombu has replaced the pool (after a reconnect).

Installed for kombu's ``redis`` name (``redis://`` URLs) when a worker starts
(``worker_init``; prefork children inherit it), rather than named in ``broker_transport``: the
connection keeps the ``redis`` name, so ``Connection.as_uri()`` (the worker's banner, Flower's
broker page) still reads ``redis://``, and a broker URL given on the command line or in
``CELERY_BROKER_URL`` picks its transport by scheme as usual. Other processes (Flower, beat,
applications that submit runs) keep kombu's own: they never consume. ``rediss://`` keeps
kombu's transport too (its TLS handling keys on that name).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

TRANSPORT = "dagworker.transport:Transport"


def _str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _prefixed(client: Any, command: str, key: str) -> str:
    """``key`` as ``command`` must name it: kombu's client adds ``global_keyprefix`` for the
    commands it lists only (HKEYS is not among them; ZRANGE is not in every kombu 5)."""
    prefix = getattr(client, "global_keyprefix", "")
    if prefix and command not in getattr(client, "PREFIXED_SIMPLE_COMMANDS", ()):
        return f"{prefix}{key}"
    return key


def delivered_at(field: str | bytes) -> float | None:
    """The delivery time in a record's field name; None for a record in kombu's format."""
    tag, sep, stamp = _str(field).rpartition("@")
    if not sep or not tag:
        return None
    try:
        return float(stamp)
    except ValueError:
        return None


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: delivery tag -> its record's field, for the deliveries this channel holds
        self._fields: dict[str, str] = {}

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        field = f"{delivery_tag}@{time.time():.6f}"
        # (kombu's JSON: it encodes what kombu's decoder turned into datetimes, UUIDs ...)
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.channel.conn_or_acquire() as client:
            client.hset(self.unacked_key, field, record)
        self._fields[delivery_tag] = field
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        field = self._fields.get(delivery_tag)
        if field is None:  # not recorded by this channel: kombu's format
            super().ack(delivery_tag)
            return
        self._forget(delivery_tag, field)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        field = self._fields.get(delivery_tag)
        if field is None:
            super().reject(delivery_tag, requeue=requeue)
            return
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._forget(delivery_tag, field)
        virtual.QoS.ack(self, delivery_tag)

    def _forget(self, delivery_tag: str, field: str) -> None:
        """Delete a delivery's record; the field is forgotten only once it is deleted (a
        failed delete leaves it to the next ack, a shutdown's restore or the sweep)."""
        with self.channel.conn_or_acquire() as client:
            client.hdel(self.unacked_key, field)
        self._fields.pop(delivery_tag, None)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        field = self._fields.get(_str(tag))
        if field is None:
            super().restore_by_tag(tag, client, leftmost)
            return
        self.restore_field(field, client, leftmost)
        # Forgotten only once restored: should the restore fail (Redis unreachable), the
        # delivery's ack still deletes its record, and it is not redelivered after it ran.
        self._fields.pop(_str(tag), None)

    def restore_field(self, field: str, client: Any = None, leftmost: bool = False) -> None:
        """Put a recorded delivery back on its queue and drop the record, once: in a
        transaction watching the hash, so two sweeps restore it once between them."""

        def restore(pipe: Any) -> None:
            record = pipe.hget(self.unacked_key, field)
            pipe.multi()
            pipe.hdel(self.unacked_key, field)
            if record:
                payload, exchange, routing_key = loads(_str(record))
                self.channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as conn:
            conn.transaction(restore, self.unacked_key)

    def restore_visible(self, start: int = 0, num: int | None = 10, interval: int = 10) -> None:
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            ceil = time.time() - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    due = []
                    for field in client.hkeys(_prefixed(client, "HKEYS", self.unacked_key)):
                        at = delivered_at(field)
                        if at is not None and at <= ceil:
                            due.append((at, _str(field)))
                    due.sort()
                    for _, field in due if num is None else due[:num]:
                        self.restore_field(field, client)
                    # kombu's own records (index + hash), from a worker of an earlier release
                    old = client.zrange(
                        _prefixed(client, "ZRANGE", self.unacked_index_key),
                        ceil,
                        0,
                        desc=True,
                        byscore=True,
                        offset=num and start,
                        num=num,
                        withscores=True,
                    )
                    for tag, _ in old or []:
                        super().restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass


class Channel(kombu_redis.Channel):
    QoS = QoS
    _kept_client: Any = None
    _kept_pool: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._kept_client is None or self._kept_pool is not pool:
            self._kept_client = self._create_client()
            self._kept_pool = pool
        yield self._kept_client

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        if self.ack_emulation and message.delivery_tag in self.qos._fields:
            self.qos.restore_by_tag(message.delivery_tag, leftmost=leftmost)
            return
        super()._restore(message, leftmost)


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make kombu's ``redis`` transport name resolve to ``Transport`` in this process."""
    kombu.transport.TRANSPORT_ALIASES["redis"] = TRANSPORT
    kombu.transport._transport_cache.pop("redis", None)  # resolved before: resolve again
