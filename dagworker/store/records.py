"""The records the store hands back: what a task's start and finish decided, read-ahead
node fields, and a read-through view of the node-state hash."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagworker.artifact import Artifact


class _HashFields:
    """Fields of one Redis hash: some prefetched in one HMGET, the rest read on first use."""

    def __init__(self, r: Any, key: str, prefetch: Sequence[str]) -> None:
        self.r = r
        self.key = key
        wanted = list(dict.fromkeys(prefetch))
        values = r.hmget(key, wanted) if wanted else []
        self.cache: dict[str, str | None] = dict(zip(wanted, values, strict=True))

    def get(self, field: str) -> str | None:
        if field not in self.cache:
            self.cache[field] = self.r.hget(self.key, field)
        return self.cache[field]


class LazyMap(Mapping[str, Any]):
    """A read-through Mapping over ``_HashFields`` that never reads the whole hash."""

    def __init__(
        self, source: _HashFields, convert: Callable[[str], Any], suffix: str = ""
    ) -> None:
        self.source = source
        self.convert = convert
        self.suffix = suffix

    def __getitem__(self, key: str) -> Any:
        value = self.source.get(key + self.suffix)
        if value is None:
            raise KeyError(key)
        return self.convert(value)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("LazyMap is not iterable: the point is not to read every field")

    def __len__(self) -> int:
        raise TypeError("LazyMap has no length")


@dataclass(frozen=True)
class TaskBegin:
    verdict: str  # run | finished | stale | inactive | missing
    spec: dict[str, Any]
    state: str
    epoch: str | None = None  # the run's input epoch, when the task may run
    #: The task's input artifacts by id, when begin_task.lua read them (None: read them).
    inputs: dict[str, Artifact] | None = None
    #: The run's fields a worker compiles it from (input, no_cache, pipeline_fp), when
    #: the caller asked for them (it had not compiled the run) and the run has a fingerprint.
    run: dict[str, str] | None = None


@dataclass(frozen=True)
class Prefetched:
    """Node-state fields and node counters read ahead, with the run lock (``decide_reads``)."""

    fields: dict[str, str | None]
    counters: dict[str, dict[str, str]]


@dataclass(frozen=True)
class TaskFinish:
    verdict: str  # recorded | duplicate | stale
    settle: bool  # the node is in the settle set: the orchestrator must advance
    handed: bool = False  # the node settled and its successors launched (dagworker.handoff)
    ended: bool = False  # handed, and it was the run's last node: the run completed
    hooks: bool = False  # ended, and the run's hooks were scheduled
