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


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live thread of every live process in the group (a solo worker is
    one process): the scheduler's nanosecond count (``task/<tid>/schedstat``). utime + stime
    count 10 ms ticks, and a 100-task run costs a couple of hundred ms of worker CPU, so ticks
    moved its per-task figure by a tenth from one run to the next. A thread that ends between
    two readings takes its time with it (undercounted); a worker's threads live as long as it
    does, dagworker's and canvas's alike."""
    total_ns = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
            # Fields after the command name, which may contain spaces, start after the last ")".
            if int(raw.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5 of stat: pgrp
                continue
            tasks = list(os.scandir(Path(entry.path, "task")))
        except OSError:
            continue  # exited while we looked
        for task in tasks:
            try:
                total_ns += int(Path(task.path, "schedstat").read_text().split()[0])
            except OSError:
                continue  # a thread that ended while we looked
    return total_ns / 1e9


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
