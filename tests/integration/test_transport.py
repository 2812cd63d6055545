"""dagworker's kombu transport (dagworker/transport.py) against a real Redis: one client per
pool for kombu's bookkeeping, and ack emulation still records and clears every delivery."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import kombu.transport
import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from dagworker.transport import TRANSPORT, Transport, install
from tests.conftest import REDIS_URL, _redis_or_skip

PREFIX = f"dwtest-transport-{secrets.token_hex(3)}:"


@pytest.fixture
def r() -> redis.Redis:
    return _redis_or_skip(REDIS_URL)


@pytest.fixture
def connection(r: redis.Redis) -> Iterator[Connection]:
    prefix = PREFIX
    conn = Connection(
        REDIS_URL, transport=TRANSPORT, transport_options={"global_keyprefix": prefix}
    )
    try:
        yield conn
    finally:
        conn.release()
        keys = list(r.scan_iter(match=f"{prefix}*"))
        if keys:
            r.delete(*keys)


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


def test_a_delivery_is_recorded_unacked_until_acknowledged(
    connection: Connection, r: redis.Redis
) -> None:
    queue = connection.SimpleQueue("dwtest-transport-q")
    try:
        queue.put({"n": 1}, serializer="json")
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        # Given a message delivered and not yet acknowledged, kombu's ack emulation holds it
        # (what a dead worker's message is restored from)
        qos = connection.default_channel.qos
        unacked, index = PREFIX + qos.unacked_key, PREFIX + qos.unacked_index_key
        assert r.hlen(unacked) == 1 and r.zcard(index) == 1
        message.ack()
        # When it is acknowledged, the record is gone
        assert r.hlen(unacked) == 0 and r.zcard(index) == 0
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
