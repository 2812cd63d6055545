"""One measurement: run a shape on one engine and read what it cost.

Costs are differences of counters read before and after: wall time from submit (the user's
description in hand) to the last result visible; server-side Redis commands (INFO
commandstats, minus the bench's own polling); CPU of the engine's worker process groups; the
Redis server's CPU. Keys a measurement created are deleted after it, outside the window.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import canvas_app, hops, redisinfo
from bench.fleet import Fleet
from bench.shapes import Shape, canvas_signatures
from dagworker import Client

#: After the final result is visible, workers still ack and send events; the counters are read
#: this much later so those belong to the measurement that caused them.
TAIL_S = 0.3
TIMEOUT_S = 1800.0


@dataclass
class Sample:
    engine: str
    shape: str
    tasks: int
    wall_s: float
    commands: int
    by_command: dict[str, int]
    worker_cpu_s: float
    redis_cpu_s: float
    client_cpu_s: float
    #: bytes clients sent the server and it sent them (INFO stats), the bench's polls included
    net_in: int = 0
    net_out: int = 0
    memory_before: int = 0
    memory_peak: int = 0
    memory_after: int = 0
    hops_s: list[float] = field(default_factory=list)
    #: dagworker only: per node slug, [commands, cpu_us] of each execution / of its launch
    executions: dict[str, list[list[int]]] = field(default_factory=dict)
    launches: dict[str, list[list[int]]] = field(default_factory=dict)

    def per_task(self, value: float) -> float:
        return value / self.tasks


@dataclass
class Bench:
    """Everything a measurement needs: the Redis it talks to, the workers, the clients."""

    r: redis.Redis
    sampler_r: redis.Redis
    redis_url: str
    db: int
    prefix: str
    fleet: Fleet
    client: Client
    probe_dir: Path
    poll_s: float = 0.01
    _token: int = 0

    def measure(self, engine: str, shape: Shape, memory: bool = False, hop: bool = True) -> Sample:
        r = self.r
        mem0 = redisinfo.used_memory(r)
        cmd0 = redisinfo.command_calls(r)
        in0, out0 = redisinfo.net_bytes(r)  # after the commandstats read: its reply is large
        cpu0, rcpu0 = self.fleet.cpu_seconds(engine), redisinfo.server_cpu_seconds(r)
        sampler: AbstractContextManager[Any] = (
            redisinfo.MemorySampler(self.sampler_r) if memory else nullcontext()
        )
        with sampler as mem:
            t0, p0 = time.perf_counter(), time.process_time()
            run = self._run_dag if engine == "dag" else self._run_canvas
            ids, polls, poll_command = run(shape)
            wall = time.perf_counter() - t0
            client_cpu = time.process_time() - p0
            time.sleep(TAIL_S)
        in1, out1 = redisinfo.net_bytes(r)
        by_command = redisinfo.diff(redisinfo.command_calls(r), cmd0)
        by_command[poll_command] = by_command.get(poll_command, 0) - polls
        sample = Sample(
            engine,
            shape.name,
            shape.tasks * shape.runs,
            wall,
            sum(by_command.values()),
            by_command,
            self.fleet.cpu_seconds(engine) - cpu0,
            redisinfo.server_cpu_seconds(r) - rcpu0,
            client_cpu,
            net_in=in1 - in0,
            net_out=out1 - out0,
            memory_before=mem0,
            memory_peak=mem.peak if memory else 0,
            memory_after=redisinfo.used_memory(r),
        )
        if engine == "dag":
            self._check_dag(ids)
            if hop:
                keys = self.client.store.keys
                sample.hops_s = [h for rid in ids for h in hops.dag_hops(r, keys, rid, shape)]
            sample.executions, sample.launches = self._probe(ids)
            for rid in ids:
                redisinfo.delete_prefix(r, self.client.store.keys.run_pattern(rid))
        else:
            redisinfo.delete_prefix(r, f"{canvas_app.app.conf.dwbench_prefix}:res:*")
        return sample

    # -- dagworker -------------------------------------------------------------------------------

    def _run_dag(self, shape: Shape) -> tuple[list[str], int, str]:
        ids = [self.client.submit(shape.pipeline).id for _ in range(shape.runs)]
        # One ZCARD per poll whatever the number of runs: a finished run leaves the active set
        # in the same commit that ends it.
        active = self.client.store.keys.runs_active
        polls = 1
        deadline = time.monotonic() + TIMEOUT_S
        while self.r.zcard(active):
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagworker {shape.name}: runs still active")
            time.sleep(self.poll_s)
            polls += 1
        return ids, polls, "zcard"

    def _check_dag(self, ids: list[str]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            pipe.hmget(self.client.store.keys.run(rid), "status", "error")
        for rid, (status, error) in zip(ids, pipe.execute(), strict=True):
            if status != "completed":
                raise RuntimeError(f"dagworker run {rid} ended {status}: {error}")

    def _probe(
        self, ids: list[str]
    ) -> tuple[dict[str, list[list[int]]], dict[str, list[list[int]]]]:
        """Ask every dagworker worker's probe for its figures, keep those of these runs."""
        self._token += 1
        token = str(self._token)
        (self.probe_dir / "request").write_text(token)
        wanted = set(ids)
        executions: dict[str, list[list[int]]] = {}
        launches: dict[str, list[list[int]]] = {}
        for worker in self.fleet.of("dag"):
            path = self.probe_dir / f"{worker.pid}-{token}.json"
            deadline = time.monotonic() + 30
            while not path.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"probe of {worker.name} did not answer")
                time.sleep(0.05)
            data = json.loads(path.read_text())
            path.unlink()
            for kind, into in (("exec", executions), ("launch", launches)):
                for key, costs in data[kind].items():
                    rid, slug = key.split("|", 1)
                    if rid in wanted:
                        into.setdefault(slug, []).extend(costs)
        return executions, launches

    # -- canvas ----------------------------------------------------------------------------------

    def _run_canvas(self, shape: Shape) -> tuple[list[str], int, str]:
        results = [sig.apply_async() for sig in canvas_signatures(shape)]
        backend = canvas_app.app.backend
        leaves = [leaf for res in results for leaf in _leaf_ids(res)]
        keys = [backend.get_key_for_task(leaf) for leaf in leaves]
        polls = 0
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            # One MGET per poll for every leaf result.
            values = self.r.mget(keys)
            polls += 1
            if all(values):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"canvas {shape.name}: results missing")
            time.sleep(self.poll_s)
        for leaf, value in zip(leaves, values, strict=True):
            status = json.loads(value)["status"]
            if status != "SUCCESS":
                raise RuntimeError(f"canvas task {leaf} ended {status}")
        return leaves, polls, "mget"


def _leaf_ids(result: Any) -> list[str]:
    """The ids whose results mean "done": a chain's last task, or every member of a group."""
    children = getattr(result, "results", None)
    if children is not None:
        return [leaf for child in children for leaf in _leaf_ids(child)]
    return [str(result.id)]
