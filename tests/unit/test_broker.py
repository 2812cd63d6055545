"""The messages dagworker writes into kombu's Redis lists are the ones Celery would send.

Celery's own ``send_task`` publishes to kombu's in-memory transport (same virtual channel as
Redis: same envelope, same base64 body encoding); the envelope from ``dagworker.broker`` must
match it field by field, except what differs per send (delivery tag, origin, reply_to).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from celery import Celery

from dagworker.broker import RedisQueues, encode

KWARGS = {"run": "r1", "node": "n", "task": 3, "attempt": 2}


def _celery_envelope(**options: Any) -> dict[str, Any]:
    app = Celery("capture", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        task_serializer="json",
        accept_content=["json"],
        task_create_missing_queues=True,
        task_send_sent_event=False,
    )
    app.send_task(
        "dagworker.plugin.x",
        kwargs=KWARGS,
        task_id="r1:n:3:2",
        queue="gpu",
        ignore_result=True,
        **options,
    )
    with app.connection_for_read() as conn:
        raw: dict[str, Any] = conn.default_channel._get("gpu")
    return json.loads(json.dumps(raw))


def _comparable(envelope: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(envelope))
    out["body"] = json.loads(base64.b64decode(out["body"]))
    for volatile in ("delivery_tag", "reply_to"):
        assert out["properties"].pop(volatile) is not None
    out["headers"].pop("origin")
    return out


def test_envelope_matches_what_send_task_produces() -> None:
    # Given the message Celery itself sends for a task with a hard time limit
    expected = _comparable(_celery_envelope(time_limit=16.5))
    # When dagworker encodes the same task
    ours = json.loads(
        encode("dagworker.plugin.x", "r1:n:3:2", KWARGS, queue="gpu", origin="o", time_limit=16.5)
    )
    # Then every header, property and the body agree
    assert _comparable(ours) == expected
    assert ours["headers"]["kwargsrepr"] == expected["headers"]["kwargsrepr"]


def test_without_time_limit_and_with_a_parent() -> None:
    ours = json.loads(
        encode(
            "dagworker.plugin.x",
            "r1:n:3:2",
            KWARGS,
            queue="gpu",
            origin="o",
            root_id="r1:a:0:1",
            parent_id="r1:m:0:1",
        )
    )
    assert ours["headers"]["timelimit"] == [None, None]
    assert ours["headers"]["root_id"] == "r1:a:0:1"
    assert ours["headers"]["parent_id"] == "r1:m:0:1"
    assert _comparable(ours)["headers"] == {
        **_comparable(_celery_envelope())["headers"],
        "root_id": "r1:a:0:1",
        "parent_id": "r1:m:0:1",
    }


def test_delivery_tags_are_unique() -> None:
    tags = {
        json.loads(encode("t", "id", {}, queue="q", origin="o"))["properties"]["delivery_tag"]
        for _ in range(100)
    }
    assert len(tags) == 100


def test_queue_keys_follow_kombu_priorities() -> None:
    queues = RedisQueues(client=None, global_keyprefix="p:kombu:")
    assert queues.key("dagworker") == "p:kombu:dagworker"
    assert queues.key("gpu", 0) == "p:kombu:gpu"
    assert queues.key("gpu", 4) == "p:kombu:gpu\x06\x163"
    assert queues.key("gpu", 9) == "p:kombu:gpu\x06\x169"


def test_publish_signal_receivers_get_send_task() -> None:
    from celery import signals

    from dagworker.tasks import _publish_signals_connected

    # Given nobody listens to the publish signals, the batched path is used
    assert not _publish_signals_connected()

    # When a tracer connects to one of them
    def traced(**_: Any) -> None:
        pass

    signals.after_task_publish.connect(traced, weak=False)
    try:
        # Then messages go through send_task, which sends the signals
        assert _publish_signals_connected()
    finally:
        signals.after_task_publish.disconnect(traced)
    assert not _publish_signals_connected()
