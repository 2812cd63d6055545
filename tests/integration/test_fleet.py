"""Operating a fleet (issue 6): queues, Flower, the metrics exporter, task-tagged log lines.

Real Redis, real worker subprocesses, a real Flower and a real ``dagworker metrics`` process;
every process started here is stopped by its process group, every key deleted by the fixtures.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import Deployment, node, service

WAIT = 120
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError) as exc:  # not listening yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: still not there after {timeout}s (last: {last!r})")


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


# -- queues ----------------------------------------------------------------------------------


def test_queues_route_tasks_to_the_workers_that_serve_them(isolated: Deployment) -> None:
    # Given a worker on the default queue and one on q2 only
    default = isolated.start_worker(wait=False)
    q2 = isolated.start_worker(queues="q2", wait=False)
    default.wait_ready()
    q2.wait_ready()
    # and a pipeline whose middle nodes run on q2: "mid" by its node's queue, "side" by its
    # plugin's queue (t_on_q2 declares queue="q2")
    pipeline = {
        "name": "queues",
        "nodes": [
            node("src", "t_emit", config={"n": 3}),
            node("mid", "t_double", "src", queue="q2"),
            node("side", "t_on_q2", "src"),
            node("total", "t_sum", "mid", "side", fan_mode="aggregate"),
        ],
    }
    # When it runs
    handle = isolated.client().submit(pipeline)
    status = handle.wait(WAIT)
    # Then it completes: the q2 worker's completions orchestrated "total" onto the default queue
    assert status.status == "completed", status.error
    (total,) = handle.outputs("total")
    assert total["count"] == 6 and total["sum"] == 0 + 2 + 4
    ran_on: dict[str, set[int]] = {}
    for call in isolated.calls(handle.id):
        ran_on.setdefault(call["node"], set()).add(call["pid"])
    # and every q2 task ran on the q2 worker, every other task on the default worker
    assert ran_on == {
        "src": {default.proc.pid},
        "mid": {q2.proc.pid},
        "side": {q2.proc.pid},
        "total": {default.proc.pid},
    }
    assert isolated.queue_length("q2") == 0 and isolated.queue_length() == 0
    # and the plugin's log lines on the q2 worker carry the ids of the task that wrote them
    for index in range(3):
        tag = f"run={handle.id} node=side task={index} attempt=1"
        line = poll(f"log line with {tag}", lambda tag=tag: _line_with(q2.log(), tag), 30)
        assert "t_on_q2 handled item" in line


def _line_with(text: str, needle: str) -> str | None:
    return next((line for line in text.splitlines() if needle in line), None)


# -- Flower ----------------------------------------------------------------------------------


def test_flower_shows_every_task_by_plugin_with_its_ids(fleet: Deployment, tmp_path: Path) -> None:
    # Given a real Flower with basic auth against the fleet's broker
    port, auth = free_port(), ("ops", "s3cret")
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "celery", "-A", "dagworker", "flower",
        f"--port={port}", "--address=127.0.0.1", f"--basic-auth={auth[0]}:{auth[1]}",
    ]  # fmt: skip
    with service(cmd, fleet.env(), tmp_path / "flower.log"):
        # (its event receiver is live once it has seen every worker's heartbeat)
        names = {w.name for w in fleet.workers}

        def workers_online() -> bool:
            code, body = http_get(f"{base}/api/workers?status=true", auth)
            online = json.loads(body) if code == 200 else {}
            return all(online.get(name) for name in names)

        poll("Flower sees every worker online", workers_online, 90)
        # Then the API refuses requests without (or with wrong) credentials
        assert http_get(f"{base}/api/tasks")[0] == 401
        assert http_get(f"{base}/api/tasks", ("ops", "wrong"))[0] == 401
        assert http_get(f"{base}/healthcheck") == (200, b"OK")  # what deploy/k8s probes
        # and /api/workers lists the fleet's workers with dagworker's plugin tasks registered
        code, body = http_get(f"{base}/api/workers?refresh=1", auth)
        assert code == 200
        workers = json.loads(body)
        assert names <= set(workers)
        for name in names:
            assert "dagworker.plugin.t_emit" in workers[name].get("registered", [])

        # When a pipeline runs
        pipeline = {
            "name": "flower",
            "nodes": [
                node("src", "t_emit", config={"n": 3}),
                node("dbl", "t_double", "src"),
                node("total", "t_sum", "dbl", fan_mode="aggregate"),
            ],
        }
        handle = fleet.client().submit(pipeline)
        assert handle.wait(WAIT).status == "completed"
        expected = {
            f"{handle.id}:src:0:1": ("t_emit", "src", 0),
            **{f"{handle.id}:dbl:{i}:1": ("t_double", "dbl", i) for i in range(3)},
            f"{handle.id}:total:0:1": ("t_sum", "total", 0),
        }

        # Then Flower shows every task, succeeded, under its plugin's name
        def all_succeeded() -> dict[str, Any] | None:
            code, body = http_get(f"{base}/api/tasks?limit=1000", auth)
            tasks = json.loads(body) if code == 200 else {}
            done = {t: tasks[t] for t in expected if tasks.get(t, {}).get("state") == "SUCCESS"}
            return tasks if len(done) == len(expected) else None

        tasks = poll("Flower shows the run's tasks as SUCCESS", all_succeeded, 60)
        for tid, (plugin, slug, index) in expected.items():
            info = tasks[tid]
            assert info["name"] == f"dagworker.plugin.{plugin}"
            assert info["worker"] in names
            # with run, node, task and attempt in the kwargs it displays
            kwargs = info["kwargs"]
            for shown in (f"'run': '{handle.id}'", f"'node': '{slug}'", f"'task': {index}"):
                assert shown in kwargs, (tid, kwargs)
            assert "'attempt': 1" in kwargs


# -- metrics ---------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a text-format 0.0.4 page; fails on a malformed line or an undeclared family."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            typed[family] = kind
            continue
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} has no # TYPE line"
        samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_exporter_counts_what_the_fleet_ran(isolated: Deployment, tmp_path: Path) -> None:
    # Given a worker and the exporter of its deployment
    isolated.start_worker()
    port = free_port()
    cmd = [
        sys.executable, "-c", "from dagworker.cli import main; main()",
        "metrics", "--port", str(port), "--address", "127.0.0.1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    with service(cmd, isolated.env(), tmp_path / "metrics.log"):
        # When a 6-task run completes and a run whose only task fails ends failed
        client = isolated.client()
        ok = client.submit(
            {
                "name": "metrics-ok",
                "nodes": [
                    node("src", "t_emit", config={"n": 4}),
                    node("dbl", "t_double", "src"),
                    node("total", "t_sum", "dbl", fan_mode="aggregate"),
                ],
            }
        )
        bad = client.submit({"name": "metrics-bad", "nodes": [node("boom", "t_fail")]})
        assert ok.wait(WAIT).status == "completed"
        assert bad.wait(WAIT).status == "failed"

        # Then a scrape (once the workers flushed, within a second or so) counts exactly that
        def settled() -> dict[Any, float] | None:
            code, body = http_get(url)
            samples = parse_prometheus(body.decode()) if code == 200 else {}
            done = _value(samples, "dagworker_runs_finished_total", pipeline="metrics-bad",
                          state="failed")  # fmt: skip
            return (
                samples
                if done
                and _value(
                    samples,
                    "dagworker_runs_finished_total",
                    pipeline="metrics-ok",
                    state="completed",
                )
                else None
            )

        samples = poll("exporter reports both runs finished", settled, 60)
        tasks = "dagworker_tasks_total"
        assert _value(samples, tasks, plugin="t_emit", outcome="completed") == 1
        assert _value(samples, tasks, plugin="t_double", outcome="completed") == 4
        assert _value(samples, tasks, plugin="t_sum", outcome="completed") == 1
        assert _value(samples, tasks, plugin="t_fail", outcome="failed") == 1
        assert _value(samples, "dagworker_runs_finished_total", pipeline="metrics-ok",
                      state="completed") == 1  # fmt: skip
        # durations: a histogram per plugin, cumulative buckets ending in +Inf == count
        dur = "dagworker_task_duration_seconds"
        assert _value(samples, dur + "_count", plugin="t_double") == 4
        buckets = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in samples.items()
            if k[0] == dur + "_bucket" and dict(k[1])["plugin"] == "t_double"
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1] == (float("inf"), 4)
        assert 0 < (_value(samples, dur + "_sum", plugin="t_double") or 0) < 60
        # queue wait: every one of the 7 task messages, on the default queue
        wait = "dagworker_task_queue_wait_seconds_count"
        assert _value(samples, wait, queue=isolated.settings.default_queue) == 7
        # orchestration: at least one pass per settled node (src, dbl, total, boom)
        assert (_value(samples, "dagworker_orchestration_seconds_count") or 0) >= 4
        # nothing is still running
        assert not [k for k in samples if k[0] == "dagworker_runs_active"]
        # and the exporter answers in the content type Prometheus expects
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
