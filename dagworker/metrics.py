"""Fleet-wide metrics: workers count into Redis, ``dagworker metrics`` exports them to Prometheus.

Cost on the hot path: none in Redis. A worker process adds each observation to an in-memory
:class:`Recorder` (a dict update under a lock) and a daemon thread of that process flushes the
deltas every :data:`FLUSH_INTERVAL_S` in one pipelined batch of ``HINCRBY``/``HINCRBYFLOAT``
into one hash per deployment (``Keys.metrics``). So a completion costs no extra round trip, and
a fleet of any size costs at most one round trip per worker process per second. A process that
is killed loses at most its last second of observations (metrics, not run state).

Because every worker adds to the same hash, any exporter (``dagworker metrics``) sees the whole
fleet: run as many as you like, they all report the same numbers. Counters only go up (until
the hash is deleted), as Prometheus counters should; histograms are stored per bucket and made
cumulative at export.

Field names in the hash are JSON arrays ``[kind, label, ...]`` so no label value (a pipeline
name may contain anything) can be confused with a separator.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("dagworker.metrics")

FLUSH_INTERVAL_S = 1.0

#: Bucket bounds (seconds). Plugins run from milliseconds to hours; queue waits and
#: orchestration are usually milliseconds but show trouble in seconds.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
ORCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True)
class Histogram:
    kind: str  # the field tag in Redis
    name: str  # the Prometheus metric name
    help: str
    label: str  # the one label name ("" for none)
    buckets: tuple[float, ...]


TASK_DURATION = Histogram(
    "dur",
    "dagworker_task_duration_seconds",
    "Time a task attempt spent in its worker, orchestration excluded, by plugin.",
    "plugin",
    TASK_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "wait",
    "dagworker_task_queue_wait_seconds",
    "Time from publishing a task message to a worker starting it, by queue.",
    "queue",
    WAIT_BUCKETS,
)
ORCHESTRATION = Histogram(
    "orch",
    "dagworker_orchestration_seconds",
    "Time a worker spent orchestrating a run after a completion (lock, decide, commit, "
    "launch successors).",
    "",
    ORCH_BUCKETS,
)
HISTOGRAMS = (TASK_DURATION, QUEUE_WAIT, ORCHESTRATION)
TASKS_TOTAL = "tasks"  # [tasks, plugin, outcome]
RUNS_FINISHED = "runs"  # [runs, pipeline, state]
RUNS_DELETED = "runs_deleted"  # [runs_deleted]: finished runs deleted by retention


def _field(*parts: str) -> str:
    return json.dumps(parts, separators=(",", ":"))


class Recorder:
    """In-memory deltas of one process, flushed to Redis by a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ints: defaultdict[str, int] = defaultdict(int)
        self._floats: defaultdict[str, float] = defaultdict(float)
        self._client: Any = None
        self._key = ""
        self._pid = 0
        self._local = threading.local()

    # -- binding ------------------------------------------------------------------------------

    def bind(self, client: Any, key: str) -> None:
        """Flush into hash ``key`` through ``client`` (a redis.Redis)."""
        self._client, self._key = client, key

    @property
    def bound(self) -> bool:
        """Whether this process reports metrics (a worker does; a client does not)."""
        return self._client is not None

    def _ensure_flusher(self) -> None:
        # A prefork child inherits the parent's recorder but not its thread: start one per pid.
        if self._pid == os.getpid() or self._client is None:
            return
        self._pid = os.getpid()
        with self._lock:  # what the parent had not flushed is the parent's to flush
            self._ints.clear()
            self._floats.clear()
        thread = threading.Thread(target=self._loop, name="dagworker-metrics", daemon=True)
        thread.start()

    def _loop(self) -> None:
        pid = self._pid
        while pid == os.getpid():
            time.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception:  # Redis hiccup: the deltas were put back, try again later
                log.warning("metrics flush failed", exc_info=True)

    # -- observations (cheap: no I/O) ---------------------------------------------------------

    def observe(self, hist: Histogram, value: float, label: str = "") -> None:
        self._ensure_flusher()
        value = max(0.0, value)
        index = bisect.bisect_left(hist.buckets, value)
        le = str(hist.buckets[index]) if index < len(hist.buckets) else "+Inf"
        with self._lock:
            self._ints[_field(hist.kind, label, le)] += 1
            self._ints[_field(hist.kind + "_n", label)] += 1
            self._floats[_field(hist.kind + "_s", label)] += value

    def count(self, kind: str, *labels: str, n: int = 1) -> None:
        self._ensure_flusher()
        with self._lock:
            self._ints[_field(kind, *labels)] += n

    def task_finished(
        self, plugin: str, outcome: str, duration: float, queue: str, wait: float | None
    ) -> None:
        self.count(TASKS_TOTAL, plugin, outcome)
        self.observe(TASK_DURATION, duration, plugin)
        if wait is not None:
            self.observe(QUEUE_WAIT, wait, queue)

    def run_finished(self, pipeline: str, state: str) -> None:
        self.count(RUNS_FINISHED, pipeline, state)

    # -- orchestration time inside the current task (excluded from its duration) -------------

    @contextmanager
    def orchestrating(self) -> Iterator[None]:
        """Time an orchestrator pass; passes nested in it (a launch that settles) are its own."""
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                spent = time.perf_counter() - started
                self.observe(ORCHESTRATION, spent)
                self._local.orch = getattr(self._local, "orch", 0.0) + spent

    def take_orchestration_time(self) -> float:
        """Orchestration seconds this thread spent since the last call (then reset)."""
        spent: float = getattr(self._local, "orch", 0.0)
        self._local.orch = 0.0
        return spent

    # -- flushing ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Send the pending deltas in one pipelined round trip; returns how many fields."""
        if self._client is None:
            return 0
        with self._lock:
            ints, floats = dict(self._ints), dict(self._floats)
            self._ints.clear()
            self._floats.clear()
        if not ints and not floats:
            return 0
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, n in ints.items():
                pipe.hincrby(self._key, name, n)
            for name, x in floats.items():
                pipe.hincrbyfloat(self._key, name, x)
            pipe.execute()
        except Exception:
            with self._lock:  # keep them for the next attempt
                for name, n in ints.items():
                    self._ints[name] += n
                for name, x in floats.items():
                    self._floats[name] += x
            raise
        return len(ints) + len(floats)


#: This process's recorder (workers bind it to their store at start-up).
recorder = Recorder()


# -- export --------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _bound(le: str) -> float:
    return float("inf") if le == "+Inf" else float(le)


def render(raw: Mapping[str, str], active: Mapping[str, int]) -> str:
    """Prometheus text exposition format 0.0.4 from the metrics hash and active-run counts."""
    parsed: list[tuple[list[str], str]] = []
    for name, value in raw.items():
        try:
            parts = json.loads(name)
        except ValueError:
            continue
        if isinstance(parts, list) and parts:
            parsed.append(([str(p) for p in parts], value))
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    family("dagworker_runs_active", "gauge", "Runs not finished yet, by state.")
    for state in sorted(active):
        out.append(f"dagworker_runs_active{_labels([('state', state)])} {active[state]}")
    family(
        "dagworker_runs_finished_total", "counter", "Runs that reached a final state, by pipeline."
    )
    for parts, value in sorted(p for p in parsed if p[0][0] == RUNS_FINISHED):
        labels = _labels([("pipeline", parts[1]), ("state", parts[2])])
        out.append(f"dagworker_runs_finished_total{labels} {int(value)}")
    family(
        "dagworker_runs_deleted_total",
        "counter",
        "Finished runs deleted once DAGWORKER_RESULT_TTL passed, child runs included.",
    )
    deleted = sum(int(value) for parts, value in parsed if parts == [RUNS_DELETED])
    out.append(f"dagworker_runs_deleted_total {deleted}")
    family("dagworker_tasks_total", "counter", "Task attempts by plugin and outcome.")
    for parts, value in sorted(p for p in parsed if p[0][0] == TASKS_TOTAL):
        labels = _labels([("plugin", parts[1]), ("outcome", parts[2])])
        out.append(f"dagworker_tasks_total{labels} {int(value)}")
    for hist in HISTOGRAMS:
        family(hist.name, "histogram", hist.help)
        out.extend(_histogram_lines(hist, parsed))
    return "\n".join(out) + "\n"


def _histogram_lines(hist: Histogram, parsed: Iterable[tuple[list[str], str]]) -> Iterator[str]:
    buckets: defaultdict[str, dict[float, int]] = defaultdict(dict)
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    for parts, value in parsed:
        if parts[0] == hist.kind and len(parts) == 3:
            buckets[parts[1]][_bound(parts[2])] = int(value)
        elif parts[0] == hist.kind + "_n":
            counts[parts[1]] = int(value)
        elif parts[0] == hist.kind + "_s":
            sums[parts[1]] = float(value)
    for label in sorted(set(buckets) | set(counts)):
        base = [(hist.label, label)] if hist.label else []
        running = 0
        for bound in (*hist.buckets, float("inf")):
            running += buckets[label].get(float(bound), 0)
            yield f"{hist.name}_bucket{_labels([*base, ('le', _number(bound))])} {running}"
        yield f"{hist.name}_sum{_labels(base)} {_number(sums.get(label, 0.0))}"
        yield f"{hist.name}_count{_labels(base)} {counts.get(label, running)}"


#: The exporter reads at most this many active runs' states per scrape.
ACTIVE_SCAN_LIMIT = 10_000


def collect(client: Any, prefix: str) -> str:
    """Read the deployment's metrics (two round trips) and render them."""
    from dagworker.keys import Keys

    keys = Keys(prefix)
    raw = client.hgetall(keys.metrics)
    run_ids = client.zrange(keys.runs_active, 0, ACTIVE_SCAN_LIMIT - 1)
    active: defaultdict[str, int] = defaultdict(int)
    if run_ids:
        pipe = client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hget(keys.run(run_id), "status")
        for status in pipe.execute():
            if status:
                active[status] += 1
    return render(raw, active)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def make_server(client: Any, prefix: str, address: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` (and ``/``) for one deployment."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/metrics"):
                self.send_error(404, "try /metrics")
                return
            try:
                body = collect(client, prefix).encode()
                status = 200
            except Exception as exc:  # Redis down: say so, Prometheus marks the target down
                body, status = f"cannot read metrics: {exc}\n".encode(), 503
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((address, port), Handler)
