"""What the Redis server tells us: command counts, CPU, memory, other clients, cleanup.

INFO commandstats and INFO cpu are server-wide, not per database: they are only the bench's
figures when nothing else uses the server. ``other_clients`` says when something does, so the
report can warn; ``--private-redis`` sidesteps the problem with a server of the bench's own.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

#: The bench's own observation commands; excluded from the counts (the memory sampler sends
#: INFO many times a second, and INFO is the very command that reads the counters).
IGNORED = frozenset({"info", "client|list", "client"})


def command_calls(r: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (commands inside Lua scripts included)."""
    stats: dict[str, Any] = r.info("commandstats")
    out: dict[str, int] = {}
    for name, values in stats.items():
        command = name.removeprefix("cmdstat_")
        if command not in IGNORED:
            out[command] = int(values["calls"])
    return out


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def net_bytes(r: redis.Redis) -> tuple[int, int]:
    """Bytes the server has read from clients and written to them since it started (INFO
    stats): messages, script arguments and replies alike, the cost of what goes over the wire."""
    stats: dict[str, Any] = r.info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def server_cpu_seconds(r: redis.Redis) -> float:
    cpu: dict[str, Any] = r.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def other_clients(r: redis.Redis, db: int) -> int:
    """Connections on other databases: someone else is using this server."""
    clients: list[dict[str, Any]] = r.client_list()
    return sum(1 for c in clients if int(c.get("db", 0)) != db)


def delete_prefix(r: redis.Redis, pattern: str) -> int:
    deleted = 0
    for batch in _scan_batches(r, pattern):
        deleted += int(r.unlink(*batch))
    return deleted


def _scan_batches(r: redis.Redis, pattern: str) -> Any:
    batch: list[Any] = []
    for key in r.scan_iter(match=pattern, count=2000):
        batch.append(key)
        if len(batch) >= 2000:
            yield batch
            batch = []
    if batch:
        yield batch


class MemorySampler:
    """Samples ``used_memory`` in a thread (10 times a second) to catch the peak of a run."""

    def __init__(self, r: redis.Redis, interval: float = 0.1) -> None:
        self.r = r
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dwbench-memory", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, used_memory(self.r))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self.peak = used_memory(self.r)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, used_memory(self.r))
