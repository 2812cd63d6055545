"""Shared fixtures: a real Redis and real Celery worker subprocesses.

Isolation: every test session uses its own key prefix (which also prefixes kombu's queues), so a
developer's own runs or another session on the same Redis are never touched. Everything this
file starts is stopped by pid, and the session's keys are deleted at the end.

Redis: ``DAGWORKER_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/0). When none answers, the
integration tests skip locally and fail in CI (``CI`` set), so a missing Redis never passes
silently in CI.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from dagworker import Client, Settings
from dagworker.tasks import task_id, task_name

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("DAGWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_PLUGINS = "tests.integration.plugins"


@contextmanager
def commands_seen(r: redis.Redis) -> Iterator[list[str]]:
    """Every command the Redis server runs inside the block (MONITOR, scripts' own commands
    included), in order; the list is filled when the block ends."""
    seen: list[str] = []
    marker = f"dwtest-end-{secrets.token_hex(4)}"  # the block's end, as the server sees it
    with r.monitor() as monitor:
        yield seen
        r.echo(marker)
        for command in monitor.listen():
            if command["command"] == f"ECHO {marker}":
                break
            seen.append(command["command"])


def _redis_or_skip(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Redis at {url}: {exc}")
        pytest.skip(f"no Redis at {url} ({exc}); set DAGWORKER_TEST_REDIS_URL")
    return client


@dataclass
class WorkerProcess:
    """One ``celery -A dagworker worker`` subprocess in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    store: redis.Redis
    workers_key: str

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.hexists(self.workers_key, self.name):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL the whole worker (its process group): nothing gets to clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        stop_group(self.proc, timeout)


def spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A subprocess in its own process group (so it can be stopped with all its children)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it if it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def service(
    cmd: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess for the length of the block, stopped by process group (Flower, beat)."""
    proc = spawn(cmd, env, log_path)
    try:
        yield proc
    finally:
        stop_group(proc)


@dataclass
class Deployment:
    """A key prefix (= an isolated dagworker deployment) on the test Redis, with its workers."""

    settings: Settings
    tmp: Path
    redis: redis.Redis
    workers: list[WorkerProcess] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWORKER_")}
        env.update(
            {
                "DAGWORKER_REDIS_URL": self.settings.redis_url,
                "DAGWORKER_KEY_PREFIX": self.prefix,
                "DAGWORKER_PLUGINS": TEST_PLUGINS,
                "DAGWORKER_VISIBILITY_TIMEOUT": str(self.settings.visibility_timeout),
                "DAGWORKER_RECONCILE_INTERVAL": str(self.settings.reconcile_interval),
                "DAGWORKER_PUBLISH_GRACE": str(self.settings.publish_grace),
                "DAGWORKER_LOCK_TIMEOUT": str(self.settings.lock_timeout),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
            }
        )
        if self.settings.broker_url:
            env["DAGWORKER_BROKER_URL"] = self.settings.broker_url
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start_worker(
        self, queues: str | None = None, wait: bool = True, **env_overrides: str
    ) -> WorkerProcess:
        name = f"w{len(self.workers) + 1}-{secrets.token_hex(2)}@{self.prefix}"
        log_path = self.tmp / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dagworker",
            "worker",
            "--pool=solo",
            "-n",
            name,
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
            "-Q",
            queues or self.settings.default_queue,
        ]
        proc = spawn(cmd, self.env(**env_overrides), log_path)
        worker = WorkerProcess(name, proc, log_path, self.redis, f"{self.prefix}:workers")
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def client(self, **changes: Any) -> Client:
        return Client(settings=replace(self.settings, **changes))

    def calls(self, run_id: str) -> list[dict[str, Any]]:
        """What the test plugins recorded (each call: node, task, attempt, worker pid)."""
        return [
            json.loads(x) for x in self.redis.lrange(f"{self.prefix}:test:calls:{run_id}", 0, -1)
        ]

    def queue_length(self, queue: str | None = None) -> int:
        return int(self.redis.llen(f"{self.prefix}:kombu:{queue or self.settings.default_queue}"))

    def redeliver(self, client: Client, run_id: str, plugin: str, slug: str, index: int) -> None:
        """Send a task's first-attempt message again, as a broker redelivery would (same id,
        same attempt)."""
        app = client.orchestrator.publisher.app  # type: ignore[attr-defined]
        app.send_task(
            task_name(plugin),
            kwargs={"run": run_id, "node": slug, "task": index, "attempt": 1},
            task_id=task_id(run_id, slug, index, 1),
            queue=self.settings.default_queue,
        )

    def drained(self, scheduled: bool = False) -> bool:
        """Nothing queued or unacknowledged (and, with ``scheduled``, nothing in the due set:
        no retry or hooks task waiting to be sent). With solo workers and prefetch 1, every
        message sent so far has then been processed."""
        return (
            self.queue_length() == 0
            and not self.redis.hlen(f"{self.prefix}:kombu:unacked")
            and not (scheduled and self.redis.zcard(f"{self.prefix}:due"))
        )

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        cursor = 0
        while True:
            cursor, keys = self.redis.scan(cursor, match=f"{self.prefix}:*", count=1000)
            if keys:
                self.redis.delete(*keys)
            if cursor == 0:
                break


def node(slug: str, plugin: str, *deps: str, **extra: Any) -> dict[str, Any]:
    """A pipeline node as the tests write them."""
    return {"slug": slug, "plugin": plugin, "depends_on": list(deps), **extra}


def wait_for(predicate: Any, timeout: float = 90.0) -> None:
    """Poll ``predicate`` until it holds (tests wait on events, not fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


@contextmanager
def flag(deployment: Deployment, name: str) -> Iterator[str]:
    """A test switch the test plugins read (``<prefix>:test:<name>``), set for the block."""
    key = f"{deployment.prefix}:test:{name}"
    deployment.redis.set(key, 1)
    try:
        yield key
    finally:
        deployment.redis.delete(key)


def make_deployment(tmp: Path, **settings: Any) -> Deployment:
    """A deployment on the test Redis, or on ``redis_url`` (a server the test started)."""
    url = settings.get("redis_url", REDIS_URL)
    client = _redis_or_skip(url)
    os.environ["DAGWORKER_PLUGINS"] = TEST_PLUGINS
    prefix = f"dwtest-{secrets.token_hex(3)}"
    base = dict(
        redis_url=url,
        key_prefix=prefix,
        plugins=(TEST_PLUGINS,),
        reconcile_interval=2.0,
        publish_grace=3.0,
        lock_timeout=5.0,
        visibility_timeout=3600.0,
    )
    base.update(settings)
    return Deployment(Settings(**base), tmp, client)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Two solo workers shared by the integration tests that do not kill workers."""
    deployment = make_deployment(tmp_path_factory.mktemp("fleet"))
    try:
        deployment.start_worker(wait=False)
        deployment.start_worker(wait=False)
        for worker in deployment.workers:
            worker.wait_ready()
        yield deployment
    finally:
        deployment.close()


#: Crash tests: a message whose worker died is redelivered within seconds, repairs are fast.
CRASH_SETTINGS: dict[str, Any] = dict(
    visibility_timeout=3.0, reconcile_interval=0.5, publish_grace=1.0, lock_timeout=2.0
)


@contextmanager
def deployment(tmp: Path, **settings: Any) -> Iterator[Deployment]:
    """A deployment for one test, closed (workers stopped by pid, keys deleted) afterwards."""
    d = make_deployment(tmp, **settings)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def crashy(tmp_path: Path) -> Iterator[Deployment]:
    """A fresh deployment with no workers and crash-test timings (CRASH_SETTINGS)."""
    with deployment(tmp_path, **CRASH_SETTINGS) as d:
        yield d


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Deployment]:
    """A fresh deployment with no workers: for tests that start, kill or time workers."""
    deployment = make_deployment(tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def client(fleet: Deployment) -> Client:
    return fleet.client()
