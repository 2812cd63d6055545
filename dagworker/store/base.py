"""The run store's plumbing: the Redis client, the named Lua scripts and how they are sent.

Every atomic step is a named Lua script in ``dagworker/lua``; the ``Store`` classes of this
package wrap them with typed methods and do the plain reads. They know nothing about Celery.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError

from dagworker.keys import Keys
from dagworker.settings import Settings

SCRIPTS = (
    "commit",
    "launch_batch",
    "finish_launch",
    "begin_task",
    "finish_task",
    "retry_task",
    "claim_due",
    "mark_compensations",
    "finish_comp_launch",
    "begin_compensation",
    "finish_compensation",
    "read_outputs",
    "purge_run",
)


def now() -> float:
    return round(time.time(), 6)


@cache
def _lua(name: str) -> str:
    return resources.files("dagworker").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


def connect(url: str) -> redis.Redis:
    """A client for ``redis://`` or ``rediss://`` URLs (password and TLS options in the URL)."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


class StoreBase:
    """What every part of the store shares: the client, the settings, the keys, the scripts."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        # Any: redis-py's annotations cannot express decode_responses=True (every reply is str).
        self.r: Any = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._scripts = {name: client.register_script(_lua(name)) for name in SCRIPTS}

    def run_exists(self, run_id: str) -> bool:
        """Whether the run exists: its hash has a status (a late write to a deleted run, such
        as a counter's increment, leaves a hash without one)."""
        return bool(self.r.hexists(self.keys.run(run_id), "status"))

    def _eval_pipeline(
        self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run scripts ``(name, keys, args)`` in one pipelined round trip; replies in order,
        errors as exception objects.

        EVALSHA directly: redis-py's pipelined Script objects would first ask SCRIPT EXISTS (a
        round trip more each time). When the server lost the first call's script (a restart,
        SCRIPT FLUSH), that call did not run: the scripts are loaded and everything is sent
        again (the calls after the first only read).
        """
        for attempt in (1, 2):
            pipe = self.r.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            if attempt == 1 and isinstance(replies[0], NoScriptError):
                for name in {name for name, _, _ in calls}:
                    self._scripts[name].sha = self.r.script_load(self._scripts[name].script)
                continue
            return replies
        raise AssertionError("unreachable")
