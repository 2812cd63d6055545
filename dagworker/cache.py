"""Task-output caching (``cache: {ttl_s}`` on a node): reuse a previous task's outputs.

A task's outputs are reused when everything that could change them is the same: the plugin's
name and ``version``, its keyword arguments (config and evaluated bindings), the fields of its
input artifacts, the run input (plugins may read ``ctx.input``) and the repeat index. Their
SHA-256 over canonical JSON is the cache key; the entry is the outputs' fields (origins are
assigned again by the engine, per run). Only tasks with at most ``MAX_CACHED_OUTPUTS`` outputs
are cached, so an entry is one small value and a hit costs one GET.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from dagworker.context import TaskContext
from dagworker.plugin import Plugin

MAX_CACHED_OUTPUTS = 200


def cache_key(plugin: Plugin, kwargs: Mapping[str, Any], ctx: TaskContext) -> str:
    identity = {
        "plugin": plugin.name,
        "version": plugin.version,
        "kwargs": dict(kwargs),
        "inputs": ctx.inputs,
        "input": ctx.input,
        "repeat": ctx.repeat_index,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def lookup(r: Any, key: str) -> list[dict[str, Any]] | None:
    raw = r.get(key)
    if raw is None:
        return None
    data: list[dict[str, Any]] = json.loads(raw)
    return data


def save(r: Any, key: str, outputs: Sequence[Mapping[str, Any]], ttl_s: float) -> None:
    if len(outputs) <= MAX_CACHED_OUTPUTS:
        r.set(key, json.dumps(list(outputs), separators=(",", ":")), px=int(ttl_s * 1000))
