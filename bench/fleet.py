"""Worker subprocesses for both engines: start, wait until ready, read their CPU, stop.

Every worker is a solo-pool Celery worker in its own process group (``start_new_session``), so
its CPU is the sum over that group and stopping it is one ``killpg`` by its pid, never a match
on process names (other engineers run workers on this machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import env

ROOT = Path(__file__).resolve().parent.parent


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    # Fields after the command name, which may contain spaces, start after the last ")".
    return path.read_text().rsplit(")", 1)[1].split()


def _ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # fields 14, 15 of stat: utime, stime


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in the group (a solo worker is one process).

    Each live thread's time is the scheduler's nanosecond count (``task/<tid>/schedstat``):
    utime + stime count 10 ms ticks, and a 100-task run costs a couple of hundred ms of worker
    CPU, so ticks moved its per-task figure by a tenth from one run to the next. Threads that
    ended are only in the process's ticks: their share (the process's ticks less its live
    threads' ticks) is added at tick precision.
    """
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            process = _stat_fields(Path(entry.path, "stat"))
            if int(process[2]) != pgid:  # field 5 of stat: pgrp
                continue
            live_ns, live_ticks = 0, 0
            for task in os.scandir(Path(entry.path, "task")):
                live_ns += int(Path(task.path, "schedstat").read_text().split()[0])
                live_ticks += _ticks(_stat_fields(Path(task.path, "stat")))
        except OSError:
            continue  # exited while we looked
        total += live_ns / 1e9 + max(0, _ticks(process) - live_ticks) / CLOCK_TICKS
    return total


@dataclass
class Worker:
    engine: str
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.proc.pid)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class Fleet:
    """The bench's workers on one Redis URL (with its DB) and key prefix."""

    redis_url: str
    prefix: str
    tmp: Path
    r: redis.Redis
    workers: list[Worker] = field(default_factory=list)

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        # A clean DAGWORKER_* environment: the engineer's own settings must not leak in.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGWORKER_", "DWBENCH_"))}
        base["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        )
        base.update(extra)
        return base

    def _spawn(self, engine: str, app: str, queue: str, extra: dict[str, str]) -> Worker:
        name = f"{engine}{sum(w.engine == engine for w in self.workers) + 1}@{self.prefix}"
        log_path = self.tmp / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool=solo",
            "-n",
            name,
            "--without-mingle",
            "--without-gossip",
            "--loglevel=WARNING",
            "-Q",
            queue,
        ]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self._env(extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(engine, name, proc, log_path)
        self.workers.append(worker)
        return worker

    def start_dagworker(self, count: int, probe_dir: Path, profile: bool = False) -> list[Worker]:
        extra = {
            "DAGWORKER_REDIS_URL": self.redis_url,
            "DAGWORKER_KEY_PREFIX": self.prefix,
            "DAGWORKER_PLUGINS": "bench.plugins",
            env.PROBE_DIR: str(probe_dir),
            env.PROFILE: "1" if profile else "0",
        }
        return [self._spawn("dag", "dagworker", "dagworker", extra) for _ in range(count)]

    def start_canvas(self, count: int) -> list[Worker]:
        extra = {env.CANVAS_REDIS_URL: self.redis_url, env.PREFIX: self.prefix}
        return [
            self._spawn("canvas", "bench.canvas_app", env.CANVAS_QUEUE, extra) for _ in range(count)
        ]

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait on the readiness each worker writes to Redis (dagworker's and canvas's hashes)."""
        hashes = {
            "dag": f"{self.prefix}:workers",
            "canvas": f"{env.canvas_prefix(self.prefix)}:workers",
        }
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            while not self.r.hexists(hashes[worker.engine], worker.name):
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker {worker.name} exited:\n{worker.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker {worker.name} not ready:\n{worker.log_tail()}")
                time.sleep(0.05)

    def of(self, engine: str) -> list[Worker]:
        return [w for w in self.workers if w.engine == engine]

    def cpu_seconds(self, engine: str) -> float:
        return sum(w.cpu_seconds() for w in self.of(engine))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
