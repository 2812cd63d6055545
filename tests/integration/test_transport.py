"""dagworker's kombu transport (dagworker/transport.py) against a real Redis: one client per
pool for kombu's bookkeeping, and ack emulation's one-field records: written on delivery,
cleared on the ack, restored by the visibility sweep, a requeued reject and a shutdown."""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import time
from collections.abc import Iterator

import kombu.transport
import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from dagworker.transport import TRANSPORT, Transport, delivered_at, install
from tests.conftest import REDIS_URL, _redis_or_skip, commands_seen

PREFIX = f"dwtest-transport-{secrets.token_hex(3)}:"


@pytest.fixture
def r() -> redis.Redis:
    return _redis_or_skip(REDIS_URL)


@pytest.fixture
def connection(r: redis.Redis) -> Iterator[Connection]:
    conn = Connection(
        REDIS_URL, transport=TRANSPORT, transport_options={"global_keyprefix": PREFIX}
    )
    try:
        yield conn
    finally:
        conn.release()
        _delete_prefix(r)


def test_kombus_bookkeeping_reuses_one_client_per_pool(connection: Connection) -> None:
    channel = connection.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
    # A client passed in is used as it is
    with channel.conn_or_acquire(first) as given:
        assert given is first
    # After kombu replaced the pool (a reconnect), a client on the new pool
    channel._pool = None
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool


def _unacked(r: redis.Redis, connection: Connection) -> dict[str, list]:
    qos = connection.default_channel.qos
    return {k: json.loads(v) for k, v in r.hgetall(PREFIX + qos.unacked_key).items()}


def _delete_prefix(r: redis.Redis) -> None:
    keys = list(r.scan_iter(match=f"{PREFIX}*"))
    if keys:
        r.delete(*keys)


def _queued(r: redis.Redis, queue: str) -> list[dict]:
    return [json.loads(m) for m in r.lrange(PREFIX + queue, 0, -1)]


def test_a_delivery_is_one_record_until_it_is_acknowledged(
    connection: Connection, r: redis.Redis
) -> None:
    queue = connection.SimpleQueue("dwtest-transport-q")
    try:
        queue.put({"n": 1}, serializer="json")
        before = time.time()
        with commands_seen(r) as watched:
            message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        # (the delivery record is one command, no index: kombu's is MULTI ZADD HSET EXEC)
        assert [c.split()[0] for c in watched if PREFIX + "unacked" in c] == ["HSET"]
        # Given a message delivered and not yet acknowledged, one field holds it, named by
        # its tag and delivery time, with kombu's value (what a dead worker's message is
        # restored from); kombu's index is not written
        qos = connection.default_channel.qos
        records = _unacked(r, connection)
        assert len(records) == 1
        [(field, (raw, exchange, routing_key))] = records.items()
        assert field.startswith(message.delivery_tag + "@")
        stamp = delivered_at(field)
        assert stamp is not None and before - 1 <= stamp <= time.time()
        assert raw["headers"] == message.headers and routing_key == "dwtest-transport-q"
        assert exchange == "dwtest-transport-q"
        assert r.zcard(PREFIX + qos.unacked_index_key) == 0
        with commands_seen(r) as watched:
            message.ack()
        # When it is acknowledged, the record is gone, in one command
        assert _unacked(r, connection) == {}
        assert [c.split()[0] for c in watched if PREFIX + "unacked" in c] == ["HDEL"]
    finally:
        queue.close()


def test_the_sweep_restores_deliveries_older_than_the_visibility_timeout_once(
    r: redis.Redis,
) -> None:
    # Given a worker that took two messages and died (its records stay), one delivered long
    # ago and one just now, and a record in kombu's own format (index + hash) left by a
    # worker of an earlier release
    conn = Connection(
        REDIS_URL,
        transport=TRANSPORT,
        transport_options={"global_keyprefix": PREFIX, "visibility_timeout": 60},
    )
    try:
        q = conn.SimpleQueue("dwtest-transport-v")
        for n in (1, 2, 3):
            q.put({"n": n}, serializer="json")
        old, new, legacy = (q.get(timeout=5) for _ in range(3))
        qos = conn.default_channel.qos
        hkey, zkey = PREFIX + qos.unacked_key, PREFIX + qos.unacked_index_key
        fields = r.hgetall(hkey)
        old_field = next(f for f in fields if f.startswith(old.delivery_tag))
        legacy_field = next(f for f in fields if f.startswith(legacy.delivery_tag))
        r.hdel(hkey, old_field, legacy_field)
        r.hset(hkey, f"{old.delivery_tag}@{time.time() - 3600:.6f}", fields[old_field])
        r.hset(hkey, legacy.delivery_tag, fields[legacy_field])
        r.zadd(zkey, {legacy.delivery_tag: time.time() - 3600})
        assert _queued(r, "dwtest-transport-v") == []
        # When another worker's sweep runs (twice: the second finds nothing more)
        other = Connection(
            REDIS_URL,
            transport=TRANSPORT,
            transport_options={"global_keyprefix": PREFIX, "visibility_timeout": 60},
        )
        try:
            for _ in range(2):
                other.default_channel.qos.restore_visible(num=None, interval=1)
        finally:
            other.release()
        # Then the old delivery and the legacy one are back on their queue once each, marked
        # redelivered, and only the recent delivery is still recorded
        back = _queued(r, "dwtest-transport-v")
        assert sorted(json.loads(base64.b64decode(m["body"]))["n"] for m in back) == [1, 3]
        assert all(m["headers"]["redelivered"] for m in back)
        left = set(r.hkeys(hkey))
        assert len(left) == 1 and next(iter(left)).startswith(new.delivery_tag + "@")
        assert r.zcard(zkey) == 0
    finally:
        conn.release()
        _delete_prefix(r)


def test_a_requeued_reject_and_a_shutdown_put_the_message_back(
    connection: Connection, r: redis.Redis
) -> None:
    queue = connection.SimpleQueue("dwtest-transport-r")
    try:
        queue.put({"n": 1}, serializer="json")
        queue.put({"n": 2}, serializer="json")
        first = queue.get(timeout=5)
        # When a delivery is rejected with requeue (Celery: the worker running it was lost)
        first.reject(requeue=True)
        # Then it is back on its queue and no longer recorded
        assert _unacked(r, connection) == {}
        assert len(_queued(r, "dwtest-transport-r")) == 2
        queue.get(timeout=5)
        assert len(_unacked(r, connection)) == 1
        # When the channel closes holding it (a worker's warm shutdown), it goes back too
        connection.default_channel.qos.restore_unacked_once()
        assert _unacked(r, connection) == {}
        assert sorted(
            json.loads(base64.b64decode(m["body"]))["n"] for m in _queued(r, "dwtest-transport-r")
        ) == [1, 2]
    finally:
        queue.close()


def test_a_restore_that_fails_leaves_the_record_to_the_ack(
    connection: Connection, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = connection.SimpleQueue("dwtest-transport-f")
    try:
        queue.put({"n": 1}, serializer="json")
        message = queue.get(timeout=5)
        qos = connection.default_channel.qos

        def unreachable(*args: object, **kwargs: object) -> None:
            raise redis.ConnectionError("Redis went away")

        # Given a restore at shutdown that fails (Redis unreachable for a moment) while the
        # task goes on running
        monkeypatch.setattr(qos, "restore_field", unreachable)
        with pytest.raises(redis.ConnectionError):
            qos.restore_by_tag(message.delivery_tag)
        monkeypatch.undo()
        # When the task finishes and is acknowledged
        message.ack()
        # Then its record is gone: the sweep will not redeliver a task that ran
        assert _unacked(r, connection) == {}
        assert _queued(r, "dwtest-transport-f") == []
    finally:
        queue.close()


def test_a_record_keeps_what_kombus_json_decoded(connection: Connection, r: redis.Redis) -> None:
    # Given a message whose headers kombu decodes into a datetime (another producer's)
    queue = connection.SimpleQueue("dwtest-transport-j")
    try:
        when = datetime.datetime(2026, 12, 2, 7, 30, tzinfo=datetime.UTC)
        queue.put({"n": 1}, serializer="json", headers={"at": when})
        # When it is delivered, its record is written (a stdlib encoder would refuse it and
        # the popped message would be lost), and restored from it, it comes back whole
        message = queue.get(timeout=5)
        assert len(_unacked(r, connection)) == 1
        connection.default_channel.qos.restore_unacked_once()
        again = queue.get(timeout=5)
        assert again.headers["at"] == when and again.payload == {"n": 1}
        again.ack()
        assert message.headers["at"] == when
    finally:
        queue.close()


def test_workers_get_it_for_redis_urls_and_keep_the_redis_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (undone after the test: the alias is process-wide)
    monkeypatch.setitem(
        kombu.transport.TRANSPORT_ALIASES, "redis", "kombu.transport.redis:Transport"
    )
    monkeypatch.delitem(kombu.transport._transport_cache, "redis", raising=False)
    assert Connection("redis://127.0.0.1:6379/0").get_transport_cls() is kombu_redis.Transport
    # When a worker starts (worker_init), even after kombu resolved the name once
    install()
    # Then redis:// URLs get this transport, under the same name: the URL Flower and the
    # worker's banner show still says redis://
    conn = Connection("redis://:secret@127.0.0.1:6379/3")
    assert conn.get_transport_cls() is Transport
    assert conn.as_uri() == "redis://:**@127.0.0.1:6379/3"
    # and rediss:// keeps kombu's (its TLS handling keys on that name)
    assert Connection("rediss://127.0.0.1:6380/0").get_transport_cls() is kombu_redis.Transport
