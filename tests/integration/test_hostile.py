"""Hostile and bad input against the real engine: refused clearly, nothing lost or half sent.

A refused submission leaves no key of its deployment in Redis and no message on its queue; a
task that produces something it must not fails with the limit or the problem named; a
malicious message does not run and does not stop the worker; deployments sharing a Redis never
see each other; password and TLS URLs work end to end.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from dagworker import Client, PipelineError, Settings
from dagworker.errors import RunNotFound
from dagworker.worker import create_app
from tests.conftest import ROOT, TEST_PLUGINS, Deployment, make_deployment, node, wait_for

WAIT = 120


def keys_of(deployment: Deployment) -> list[str]:
    return sorted(deployment.redis.scan_iter(match=f"{deployment.prefix}:*", count=1000))


# -- refused before anything is sent ----------------------------------------------------------

LAUGHS = "\n".join(
    ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["name: p", "nodes: [{slug: a, plugin: t_emit, config: {n: *l9}}]"]
)

BAD_FILES: dict[str, tuple[str, str, str]] = {
    # case: (file name, content, what the error must say)
    "malformed yaml": (
        "p.yaml",
        "name: p\nnodes:\n  - slug: a\n   plugin: t_emit\n",
        "invalid YAML",
    ),
    "malformed json": ("p.json", '{"name": "p", "nodes": [}', "invalid JSON at line 1"),
    "duplicate key": (
        "p.yaml",
        "name: p\nnodes:\n  - {slug: a, plugin: t_emit, plugin: t_fail}\n",
        "duplicate key 'plugin'",
    ),
    "huge": ("p.yaml", "name: p\n#" + "x" * 1_000_001 + "\n", "over the 1000000-byte limit"),
    "deep": ("p.json", '{"a":' * 50_000 + "1" + "}" * 50_000, "nesting too deep"),
    "billion laughs": ("p.yaml", LAUGHS, "YAML aliases expand"),
    "cycle": (
        "p.yaml",
        "name: p\nnodes:\n  - {slug: a, plugin: t_emit, depends_on: [b]}\n"
        "  - {slug: b, plugin: t_emit, depends_on: [a]}\n",
        "cycle: ",
    ),
    "os.system": ("p.yaml", "name: p\nnodes: [{slug: a, plugin: os.system}]\n", "unknown plugin"),
    "celery app": (
        "p.yaml",
        "name: p\nnodes: [{slug: a, plugin: dagworker.worker.app}]\n",
        "unknown plugin 'dagworker.worker.app'",
    ),
    "dotted path to a plugin function": (
        "p.yaml",
        "name: p\nnodes: [{slug: a, plugin: tests.integration.plugins.t_emit}]\n",
        "unknown plugin 'tests.integration.plugins.t_emit'",
    ),
    "typo": ("p.yaml", "name: p\nnodes: [{slug: a, plugin: t_emitt}]\n", "did you mean 't_emit'?"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_pipeline_file_is_refused_and_nothing_is_written_or_sent(
    case: str, isolated: Deployment, tmp_path: Path
) -> None:
    # Given a deployment with nothing in Redis and a bad pipeline file
    name, content, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_text(content)
    client = isolated.client()
    assert keys_of(isolated) == []
    # When it is submitted
    with pytest.raises(PipelineError) as info:
        client.submit(path)
    # Then the error names the problem, no run exists and no message was queued
    assert message in str(info.value)
    assert keys_of(isolated) == []
    assert isolated.queue_length() == 0


def test_cli_refuses_a_bad_file_with_exit_code_2(isolated: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(LAUGHS)
    for command in (["validate", str(path)], ["run", str(path), "--wait"]):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "dagworker"), *command],
            env=isolated.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "YAML aliases expand" in " ".join((done.stdout + done.stderr).split())  # unwrapped
        assert "Traceback" not in done.stderr
    assert keys_of(isolated) == []
    assert isolated.queue_length() == 0


# -- bad plugin output ------------------------------------------------------------------------


def test_oversized_artifact_fails_the_task_naming_the_limit(fleet: Deployment) -> None:
    # Given a task whose second artifact is over DAGWORKER_MAX_ARTIFACT_BYTES (1,000,000)
    client = fleet.client()
    p = {
        "name": "big",
        "nodes": [
            node("big", "t_big", config={"size": 1_000_001}),
            node("after", "t_double", "big"),
        ],
    }
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then the task fails naming the limit, none of its outputs is kept, nothing runs after
    assert status.status == "failed"
    task = client.store.task(handle.id, "big", 0)
    assert task["state"] == "failed"
    assert "DAGWORKER_MAX_ARTIFACT_BYTES" in task["error"] and "1000000" in task["error"]
    assert "DAGWORKER_MAX_ARTIFACT_BYTES" in (status.error or "")
    assert handle.outputs("big") == []
    assert status.nodes["after"].state == "pending" and status.nodes["after"].tasks == 0


WEIRD = {
    "set": "not JSON-serialisable",
    "bytes": "not JSON-serialisable",
    "nan": "not JSON-serialisable",
    "inf": "not JSON-serialisable",
    "int_keys": "non-string keys",
    "text": "returned str; return a dict",
    "number": "returned int; return a dict",
    "list_of_text": "output #1 is str, not a dict",
    "circular": "not JSON-serialisable",
}


def test_non_json_plugin_output_fails_each_task_clearly(fleet: Deployment) -> None:
    # Given one node per kind of bad output, each allowed to fail on its own
    client = fleet.client()
    nodes = [
        node(kind.replace("_", "-"), "t_weird", config={"kind": kind}, on_failure="continue")
        for kind in WEIRD
    ]
    handle = client.submit({"name": "weird", "nodes": [*nodes, node("ok", "t_emit")]})
    status = handle.wait(WAIT)
    # Then each fails with an error naming the plugin and the problem; the rest completes
    assert status.status == "failed"
    for kind, message in WEIRD.items():
        slug = kind.replace("_", "-")
        error = client.store.task(handle.id, slug, 0)["error"]
        assert status.nodes[slug].state == "failed", slug
        assert "plugin 't_weird'" in error and message in error, (kind, error)
        assert handle.outputs(slug) == []
    assert status.nodes["ok"].state == "completed"
    assert all(w.proc.poll() is None for w in fleet.workers)


def test_redos_patterns_on_long_texts_stay_fast_end_to_end(fleet: Deployment) -> None:
    # Given long texts and a filter and a binding with the classic catastrophic pattern
    client = fleet.client()
    texts = ["a" * 200_000, "a" * 200_000 + "b", "b" + "a" * 200_000]
    p = {
        "name": "redos",
        "nodes": [
            node("src", "t_texts", config={"texts": texts}),
            node(
                "kept",
                "t_kwargs",
                "src",
                edge_filters={
                    "src": {"rules": [{"field": "text", "op": "matches", "value": "^(a+)+b$"}]}
                },
                bindings={"hit": "{src.text | match('(a|aa)+b')}", "n": "{src.n}"},
            ),
            node("all", "t_kwargs", "src", bindings={"hit": "{src.text | match('^(a+)+$')}"}),
        ],
    }
    start = time.monotonic()
    handle = client.submit(p)
    status = handle.wait(WAIT)
    # Then the run completes with the right answers, in far less than a backtracking engine
    # would need (2**200000 steps)
    assert status.status == "completed", status.error
    assert [o["kwargs"] for o in handle.outputs("kept")] == [{"hit": True, "n": 1}]
    assert [o["kwargs"]["hit"] for o in handle.outputs("all")] == [True, False, False]
    assert time.monotonic() - start < 60


# -- a malicious message ----------------------------------------------------------------------


@dataclass
class Canary:
    """Unpickling this creates ``path``: proof that a worker deserialised pickle."""

    path: Path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def test_pickle_message_is_refused_and_the_worker_keeps_serving(
    isolated: Deployment, tmp_path: Path
) -> None:
    # Given one worker, and a pickle-serialised task message pushed onto its queue by hand
    worker = isolated.start_worker()
    marker = tmp_path / "unpickled"
    app = create_app(isolated.settings)
    payload = {"run": Canary(marker), "node": "a", "task": 0, "attempt": 1}
    assert pickle.loads(pickle.dumps(Canary(tmp_path / "self-check"))) is None
    assert (tmp_path / "self-check").exists()  # the canary works when unpickled
    app.send_task(
        "dagworker.plugin.t_emit",
        kwargs=payload,
        queue=isolated.settings.default_queue,
        serializer="pickle",
        task_id="hostile-pickle",
    )
    # When the worker takes it (the queue drains)
    wait_for(lambda: isolated.queue_length() == 0, WAIT)
    # Then it was refused without being deserialised, and the same worker still serves runs
    handle = isolated.client().submit({"name": "after", "nodes": [node("a", "t_emit")]})
    assert handle.wait(WAIT).status == "completed"
    assert worker.proc.poll() is None
    assert not marker.exists()
    assert "pickle" in worker.log() and ("untrusted" in worker.log() or "Refusing" in worker.log())
    assert isolated.redis.hlen(f"{isolated.prefix}:kombu:unacked") == 0
    app.close()


# -- deployments sharing one Redis ------------------------------------------------------------


def test_two_prefixes_on_one_redis_never_see_each_other(
    isolated: Deployment, tmp_path: Path
) -> None:
    # Given deployments A and B on the same Redis, only B with a worker
    a = isolated
    (tmp_path / "b").mkdir()
    b = make_deployment(tmp_path / "b")
    try:
        b_worker = b.start_worker()
        client_a, client_b = a.client(), b.client()
        p = {"name": "mine", "nodes": [node("a", "t_emit", config={"n": 2})]}
        # When each submits a run
        run_a = client_a.submit(p)
        run_b = client_b.submit(p)
        # Then B's worker runs B's run and never A's, whose message waits on A's own queue
        assert run_b.wait(WAIT).status == "completed"
        assert a.queue_length() == 1 and run_a.state().value == "running"
        assert [r.run_id for r in client_a.runs()] == [run_a.id]
        assert [r.run_id for r in client_b.runs()] == [run_b.id]
        with pytest.raises(RunNotFound):
            client_b.get(run_a.id)
        with pytest.raises(RunNotFound):
            client_a.get(run_b.id)
        assert list(a.redis.hkeys(f"{a.prefix}:workers")) == []
        # and once A has a worker of its own, A's run completes there
        a_worker = a.start_worker()
        assert run_a.wait(WAIT).status == "completed"
        assert {c["pid"] for c in a.calls(run_a.id)} == {a_worker.proc.pid}
        assert {c["pid"] for c in b.calls(run_b.id)} == {b_worker.proc.pid}
    finally:
        b.close()


# -- password and TLS -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_redis(tmp: Path, url: str, *args: str) -> RedisServer:
    log = tmp / "redis-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["redis-server", "--save", "", "--appendonly", "no", "--dir", str(tmp), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RedisServer(proc, url, log)
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server did not start:\n{log.read_text()}") from None
            time.sleep(0.05)
        finally:
            client.close()


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "1", "-subj", "/CN=dagworker-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (tmp / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "1",
            "-extfile", "san.cnf")  # fmt: skip
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


def deployment_on(url: str, tmp: Path) -> Deployment:
    settings = Settings(
        redis_url=url,
        key_prefix=f"dwtest-{os.getpid()}-{tmp.name[-12:]}".replace("_", "-")[:60],
        plugins=(TEST_PLUGINS,),
        reconcile_interval=2.0,
        publish_grace=3.0,
        lock_timeout=5.0,
    )
    return Deployment(settings, tmp, redis.Redis.from_url(url, decode_responses=True))


def run_end_to_end(deployment: Deployment) -> None:
    deployment.start_worker()
    p = {
        "name": "secure",
        "nodes": [node("src", "t_emit", config={"n": 3}), node("each", "t_double", "src")],
    }
    handle = deployment.client().submit(p)
    status = handle.wait(WAIT)
    assert status.status == "completed", status.error
    assert [o["double"] for o in handle.outputs("each")] == [0, 2, 4]


def test_password_protected_redis_end_to_end(tmp_path: Path) -> None:
    port = _free_port()
    password = "s3cr3t-pw"
    server = start_redis(
        tmp_path, f"redis://:{password}@127.0.0.1:{port}/0", "--port", str(port),
        "--requirepass", password,
    )  # fmt: skip
    deployment = deployment_on(server.url, tmp_path)
    try:
        # a wrong password is refused with Redis's own clear error
        wrong = Client(settings=Settings(redis_url=f"redis://:nope@127.0.0.1:{port}/0"))
        with pytest.raises(redis.AuthenticationError):
            wrong.runs()
        run_end_to_end(deployment)
    finally:
        deployment.close()
        server.stop()


def test_tls_redis_end_to_end(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    port = _free_port()
    password = "tls-pw"
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    server = start_redis(
        tmp_path, url, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        "--requirepass", password,
    )  # fmt: skip
    deployment = deployment_on(server.url, tmp_path)
    try:
        # the server has no plaintext port (--port 0): the worker, the broker and the client
        # all went through TLS
        run_end_to_end(deployment)
        # Without the CA the broker refuses the server's certificate (kombu alone would not
        # have checked it): verification is on by default
        unverified = f"rediss://:{password}@127.0.0.1:{port}/0"
        app = create_app(Settings(redis_url=unverified, key_prefix=deployment.prefix))
        with app.connection_for_write() as conn, pytest.raises(Exception, match="CERTIFICATE"):
            conn.ensure_connection(max_retries=0)
        app.close()
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE"):
            Client(settings=Settings(redis_url=unverified)).runs()
    finally:
        deployment.close()
        server.stop()
