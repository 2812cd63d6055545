"""Worker-side probe: what one task execution costs on dagworker's completion path.

Installed by ``bench.plugins`` inside dagworker worker subprocesses only (no file under
``dagworker/`` changes). It wraps ``Orchestrator.execute`` (begin_task -> plugin -> finish_task
-> advance, plus any launch a completion causes) and ``Orchestrator.launch``, and records per
call the Redis commands this thread sent and the thread's CPU time. Commands are client round
trips: a pipeline of n commands counts n, an EVALSHA counts 1 whatever the script does inside
(the server-side view is INFO commandstats, measured by the bench process).

Figures stay in memory (writing them per task would add CPU to what is measured); the bench
asks for them by writing a token to ``<dir>/request`` and the probe answers with
``<dir>/<pid>-<token>.json`` (and ``.prof`` when profiling).
"""

from __future__ import annotations

import cProfile
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis
import redis.client

from dagworker.orchestrator import Orchestrator

#: Per-thread command counter: the worker's background thread (due retries, reconciler) also
#: talks to Redis, and must not be charged to the task running in the main thread.
_local = threading.local()
_records: dict[str, dict[str, list[list[int]]]] = {"exec": {}, "launch": {}}
_profiler: cProfile.Profile | None = None
POLL_S = 0.2


def _count(n: int) -> None:
    _local.n = getattr(_local, "n", 0) + n


def _commands() -> int:
    return int(getattr(_local, "n", 0))


def _patch_redis() -> None:
    plain = redis.Redis.execute_command
    pipelined = redis.client.Pipeline.execute

    def execute_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
        _count(1)
        return plain(self, *args, **options)

    def execute(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        _count(len(self.command_stack))
        return pipelined(self, raise_on_error)

    redis.Redis.execute_command = execute_command  # type: ignore[method-assign]
    redis.client.Pipeline.execute = execute  # type: ignore[method-assign]


def _measured(kind: str, key: str, started_cmds: int, started_cpu: float) -> None:
    cost = [_commands() - started_cmds, int((time.thread_time() - started_cpu) * 1e6)]
    _records[kind].setdefault(key, []).append(cost)


def _patch_orchestrator() -> None:
    execute = Orchestrator.execute
    launch = Orchestrator.launch

    def measured_execute(
        self: Orchestrator, run_id: str, slug: str, index: int, attempt: int
    ) -> str:
        n0, t0 = _commands(), time.thread_time()
        if _profiler is not None:
            _profiler.enable()
        try:
            return execute(self, run_id, slug, index, attempt)
        finally:
            if _profiler is not None:
                _profiler.disable()
            _measured("exec", f"{run_id}|{slug}", n0, t0)

    def measured_launch(self: Orchestrator, run_id: str, slug: str, **options: Any) -> None:
        n0, t0 = _commands(), time.thread_time()
        try:
            launch(self, run_id, slug, **options)
        finally:
            _measured("launch", f"{run_id}|{slug}", n0, t0)

    Orchestrator.execute = measured_execute  # type: ignore[method-assign]
    Orchestrator.launch = measured_launch  # type: ignore[method-assign]


def _answer(directory: Path, token: str) -> None:
    global _records
    data, _records = _records, {"exec": {}, "launch": {}}
    pid = os.getpid()
    if _profiler is not None:
        _profiler.dump_stats(directory / f"{pid}-{token}.prof")
        _profiler.clear()
    tmp = directory / f".{pid}-{token}.tmp"
    tmp.write_text(json.dumps(data))
    # The bench waits for the final name: a rename makes the answer appear whole.
    os.replace(tmp, directory / f"{pid}-{token}.json")


def _serve(directory: Path) -> None:
    request = directory / "request"
    seen = ""
    while True:
        time.sleep(POLL_S)
        try:
            token = request.read_text().strip()
        except FileNotFoundError:
            continue
        if token and token != seen:
            seen = token
            _answer(directory, token)


def install(directory: str, profile: bool = False) -> None:
    global _profiler
    _patch_redis()
    _patch_orchestrator()
    if profile:
        _profiler = cProfile.Profile()
    threading.Thread(
        target=_serve, args=(Path(directory),), name="dwbench-probe", daemon=True
    ).start()
