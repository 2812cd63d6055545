"""The Python API: ``Client(redis_url).submit(pipeline, input) -> RunHandle``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagworker import subpipeline
from dagworker.catalog import Catalog, Entry, Registration, split_ref
from dagworker.errors import PipelineLoadError, RunNotFound, RunTimeout
from dagworker.orchestrator import Orchestrator
from dagworker.pipeline import Pipeline, read_pipeline_file
from dagworker.plugin import Registry
from dagworker.plugin import registry as default_registry
from dagworker.settings import Settings
from dagworker.states import NodeState, RunState
from dagworker.status import RunStatus, TaskHistory, read_status, task_history
from dagworker.store import Store, now
from dagworker.validation import check_input, validate

PipelineSource = Pipeline | Mapping[str, Any] | str | Path


def load_pipeline(
    source: PipelineSource,
    registry: Registry | None = None,
    resolve: Callable[[str], Pipeline] | None = None,
) -> Pipeline:
    """Load and validate a pipeline from a model, a dict, or a YAML/JSON file path.

    ``resolve`` finds registered pipelines that nodes name as sub-pipelines.
    """
    raw: Pipeline | Mapping[str, Any]
    if isinstance(source, str | Path):
        raw = read_pipeline_file(source)
    else:
        raw = source
    return validate(raw, registry or default_registry, resolve)


def launch(
    orch: Orchestrator,
    registry: Registry,
    pipeline: PipelineSource,
    input: Mapping[str, Any] | None = None,
    *,
    no_cache: bool = False,
) -> str:
    """Validate a pipeline and its run input, then start a run; its id. Nothing is sent when
    either is invalid."""
    resolve = subpipeline.resolver(Catalog(orch.store.r, orch.store.keys))
    validated = subpipeline.pin(load_pipeline(pipeline, registry, resolve), resolve)
    run_input = check_input(validated, dict(input or {}))
    json.dumps(run_input)  # the run input must be JSON (raises TypeError naming the value)
    return orch.start_run(validated, run_input, no_cache=no_cache)


class RunHandle:
    """A submitted run: poll it, wait for it, read its status."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def status(self, history: bool = False) -> RunStatus:
        """The run's state and per-node counts; ``history`` adds status transitions and every
        attempt (times, worker, error) of the tasks that failed or were retried."""
        return read_status(self.client.store, self.id, with_history=history)

    def tasks(self, node: str, limit: int = 200) -> list[TaskHistory]:
        """Every task of ``node`` (the first ``limit``) with all its attempts."""
        counters = self.client.store.node_counters(self.id, [node])[node]
        total = min(int(counters.get("tasks", 0)), limit)
        return [task_history(self.client.store, self.id, node, i) for i in range(total)]

    def state(self) -> RunState:
        return RunState(self.client.store.run(self.id)["status"])

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> RunStatus:
        """Block until the run reaches a terminal state; RunTimeout after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            if self.state().terminal:
                return self.status()
            if deadline is not None and time.monotonic() >= deadline:
                status = self.status()
                raise RunTimeout(f"run {self.id} still {status.status} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def cancel(self) -> bool:
        """Cancel the run; False when it was already cancelled."""
        from dagworker.control import cancel

        return cancel(self.client.orchestrator, self.id)

    def pause(self) -> bool:
        from dagworker.control import pause

        return pause(self.client.orchestrator, self.id)

    def resume(self) -> bool:
        from dagworker.control import resume

        return resume(self.client.orchestrator, self.id)

    def retry(self, input: Mapping[str, Any] | None = None, on_change: str = "raise") -> bool:
        """Restart a failed or cancelled run, reusing its completed work (same run id).

        ``input``: a new run input (checked against the pipeline's schema); when its fingerprint
        differs, ``on_change`` decides: ``raise`` (default), ``reuse`` or ``reset``.
        """
        from dagworker.control import retry

        checked = None
        if input is not None:
            pipeline = self.client.orchestrator.compiled(self.id).pipeline
            checked = check_input(pipeline, dict(input))
        return retry(self.client.orchestrator, self.id, checked, on_change)

    def replay(self, nodes: Sequence[str]) -> RunHandle:
        """A new run reusing this run's outputs except ``nodes`` and their descendants."""
        from dagworker.control import replay

        return RunHandle(self.client, replay(self.client.orchestrator, self.id, list(nodes)))

    def rollback(self) -> bool:
        """Undo the run's completed work (or resume a failed rollback); False if nothing to do."""
        from dagworker.rollback import request

        return request(self.client.orchestrator, self.id)

    def outputs(self, node: str) -> list[dict[str, Any]]:
        """Fields of every artifact a node produced, in task then emission order."""
        return [a.fields for a in self.client.store.iter_artifacts(self.id, node)]


class Fired(list[RunHandle]):
    """The runs an event started (a list of RunHandle) and, in ``refused``, the subscribed
    pipelines that did not start: pipeline name -> why (usually its input schema).
    ``started`` maps pipeline name -> its RunHandle."""

    def __init__(
        self, event: str, started: Mapping[str, RunHandle], refused: Mapping[str, str]
    ) -> None:
        super().__init__(started.values())
        self.event = event
        self.started = dict(started)
        self.refused = dict(refused)


class Client:
    """Submit and inspect runs. Settings default to the environment (DESIGN §8)."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        registry: Registry | None = None,
        load_plugins: bool = True,
    ) -> None:
        base = settings or Settings.from_env()
        if redis_url is not None:
            base = Settings(**{**base.__dict__, "redis_url": redis_url})
        self.settings = base
        self.registry = registry or default_registry
        self.store = Store.from_settings(base)
        self._load_plugins = load_plugins
        self._orch: Orchestrator | None = None

    @property
    def orchestrator(self) -> Orchestrator:
        if self._orch is None:
            # Celery is imported only when the client first publishes.
            from dagworker.tasks import CeleryPublisher
            from dagworker.worker import create_app, load_plugins

            if self._load_plugins:
                load_plugins(self.settings)
            app = create_app(self.settings)
            self._orch = Orchestrator(
                self.store,
                CeleryPublisher.for_settings(app, self.settings, self.store.r),
                self.registry,
            )
        return self._orch

    def validate(self, pipeline: PipelineSource) -> Pipeline:
        self.orchestrator  # noqa: B018  (loads plugins so validation sees them)
        return load_pipeline(pipeline, self.registry, subpipeline.resolver(self.catalog))

    def submit(
        self,
        pipeline: PipelineSource,
        input: Mapping[str, Any] | None = None,
        *,
        no_cache: bool = False,
    ) -> RunHandle:
        """Validate, then start a run. Nothing is sent when the pipeline or input is invalid.

        A ``str`` is always a file path; a registered pipeline is run with
        ``submit(client.pipeline("name"), input)`` (validated again here: plugins may have
        changed since it was registered). ``no_cache``: nodes with ``cache:`` run their plugins
        anyway (and refresh the cache).
        """
        orch = self.orchestrator
        try:
            return RunHandle(self, launch(orch, self.registry, pipeline, input, no_cache=no_cache))
        except PipelineLoadError as exc:
            if isinstance(pipeline, str) and not Path(pipeline).exists():
                name = split_ref(pipeline)[0]
                if self.store.r.exists(self.store.keys.catalog_meta(name)):
                    raise PipelineLoadError(
                        f"{exc}; {name!r} is a registered pipeline: run it with "
                        f"submit(client.pipeline({pipeline!r}), ...)"
                    ) from exc
            raise

    # -- registered pipelines, triggers, schedules -------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.store.r, self.store.keys)

    def register(self, pipeline: PipelineSource) -> Registration:
        """Validate against this process's plugins and store a version: ``(name, version)``.

        The same content again is a no-op (its existing version is returned); different content
        under an existing explicit ``version`` raises VersionConflict.
        """
        return self.catalog.register(self.validate(pipeline))[0]

    def pipelines(self) -> list[Entry]:
        """Every registered pipeline: name, versions in registration order, latest."""
        return self.catalog.entries()

    def pipeline(self, name: str, version: str | int | None = None) -> Pipeline:
        """A registered pipeline: ``"name"`` (latest), ``"name@3"`` or ``name, version=3``."""
        base, chosen = split_ref(name, version)
        return self.catalog.get(base, chosen)

    def fire(self, event: str, payload: Mapping[str, Any] | None = None) -> Fired:
        """Start every registered pipeline subscribed to ``event`` with ``payload`` as input.

        Returns the started runs; ``.refused`` names the subscribers that refused the payload
        (the others still start). An event nobody subscribes to returns an empty list.
        """
        from dagworker.triggers import fire

        orch = self.orchestrator
        outcome = fire(
            self.catalog,
            event,
            dict(payload or {}),
            lambda p, i: launch(orch, self.registry, p, i),
        )
        handles = {name: RunHandle(self, run_id) for name, run_id in outcome.started.items()}
        return Fired(event, handles, outcome.refused)

    def get(self, run_id: str) -> RunHandle:
        self.store.run(run_id)  # raises RunNotFound
        return RunHandle(self, run_id)

    def runs(self, limit: int = 20) -> list[RunStatus]:
        """The latest runs, newest first (a run deleted meanwhile, DAGWORKER_RESULT_TTL, is
        left out)."""
        out = []
        for rid in self.store.run_ids(limit=limit):
            try:
                out.append(read_status(self.store, rid, with_nodes=False))
            except RunNotFound:
                continue
        return out

    def prune(self, older_than: float | None = None) -> int:
        """Delete the finished runs that ended ``older_than`` seconds ago or more (default:
        DAGWORKER_RESULT_TTL), as the workers' reconciler does every pass, until none is left;
        returns how many were deleted (child runs included). The same rules hold: a run that
        runs again is kept, one with tasks in flight is kept one period more, a child goes
        with its parent."""
        ttl = self.store.settings.result_ttl if older_than is None else older_than
        if not ttl > 0:
            raise ValueError(f"older_than={older_than!r}: a number of seconds above 0")
        total = 0
        while n := self.store.purge_expired(now(), budget_s=10.0, ttl=ttl):
            total += n
        return total

    def node_state(self, run_id: str, slug: str) -> NodeState:
        return NodeState(self.store.nodes(run_id)[slug])
