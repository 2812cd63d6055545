"""Task-output caching with real workers (issue 8): a hit does not call the plugin again."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dagworker import Client
from tests.conftest import Deployment

WAIT = 60


def cached(tag: str = "x") -> dict[str, Any]:
    return {
        "name": "cached",
        "nodes": [
            {"slug": "src", "plugin": "t_emit", "config": {"n": 3}},
            {
                "slug": "tag",
                "plugin": "t_tag",
                "depends_on": ["src"],
                "config": {"tag": tag},
                "cache": {"ttl_s": 60},
            },
        ],
    }


def calls(fleet: Deployment, run_id: str) -> Counter[str]:
    return Counter(c["node"] for c in fleet.calls(run_id))


def test_cache_hit_skips_the_plugin_and_a_changed_input_does_not(
    client: Client, fleet: Deployment
) -> None:
    # Given a first run that fills the cache (a fresh tag, so nothing is cached yet)
    tag = f"t-{fleet.prefix}-{id(client)}"
    first = client.submit(cached(tag))
    assert first.wait(WAIT).status == "completed"
    assert calls(fleet, first.id)["tag"] == 3
    # When the same pipeline runs again with the same inputs
    second = client.submit(cached(tag))
    status = second.wait(WAIT)
    # Then the cached node's plugin is not called, its outputs are the same, hits are shown
    assert status.status == "completed"
    assert calls(fleet, second.id) == {"src": 1}
    assert second.outputs("tag") == first.outputs("tag")
    assert status.nodes["tag"].cache_hits == 3
    # A changed argument is a different identity: the plugin runs
    third = client.submit(cached(tag + "-other"))
    assert third.wait(WAIT).status == "completed"
    assert calls(fleet, third.id)["tag"] == 3
    # --no-cache runs the plugin even on a hit
    fourth = client.submit(cached(tag), no_cache=True)
    assert fourth.wait(WAIT).status == "completed"
    assert calls(fleet, fourth.id)["tag"] == 3
    assert fourth.status().nodes["tag"].cache_hits == 0
