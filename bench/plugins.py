"""No-op dagworker plugins for the bench; workers load them with DAGWORKER_PLUGINS=bench.plugins.

Each returns one small artifact so a successor always has an input (a node whose inputs are
empty is *filtered*, which would cut a chain short).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from bench import env
from dagworker import TaskContext, plugin


@plugin("bench_emit")
def bench_emit(ctx: TaskContext, n: int = 1) -> Iterator[dict[str, int]]:
    """The fan-out source: streams n artifacts (dagworker stages them in chunks)."""
    for k in range(n):
        yield {"k": k}


@plugin("bench_step")
def bench_step(ctx: TaskContext) -> dict[str, Any]:
    return {"k": ctx.task_index}


@plugin("bench_agg")
def bench_agg(ctx: TaskContext) -> dict[str, Any]:
    return {"n": len(ctx.artifacts)}


# Only worker subprocesses started by the bench have a probe directory; the bench process
# imports this module just to register the plugins for validation.
if os.environ.get(env.PROBE_DIR):
    from bench import probe

    probe.install(os.environ[env.PROBE_DIR], profile=os.environ.get(env.PROFILE) == "1")
