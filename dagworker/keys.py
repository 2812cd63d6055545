"""Every Redis key dagworker uses, in one place.

All keys of one run share the hash tag ``{<run id>}`` so a run lives in one Redis Cluster slot
and its Lua scripts may touch any of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    # -- fleet-wide --------------------------------------------------------------------------
    @property
    def runs_active(self) -> str:
        """Sorted set: run id -> creation time, for runs not yet finished (reconciler scans it)."""
        return f"{self.prefix}:runs:active"

    @property
    def runs_all(self) -> str:
        """Sorted set: run id -> creation time (``dagworker runs``)."""
        return f"{self.prefix}:runs:all"

    @property
    def runs_ended(self) -> str:
        """Sorted set: run id -> finish time, for finished runs (the retention sweep's queue;
        a run resumed since it ended is dropped from it when the sweep finds it running)."""
        return f"{self.prefix}:runs:ended"

    @property
    def runs_purging(self) -> str:
        """Sorted set: run id -> time its deletion began; a sweep interrupted midway resumes."""
        return f"{self.prefix}:runs:purging"

    @property
    def runs_backfill(self) -> str:
        """String: the ZSCAN cursor over ``runs_all`` that adds runs which ended before the
        retention sweep existed to ``runs_ended``; ``done`` once it went round."""
        return f"{self.prefix}:runs:ended:backfill"

    @property
    def workers(self) -> str:
        """Hash: worker name -> JSON (ready time, pid, plugins), written when a worker is ready."""
        return f"{self.prefix}:workers"

    @property
    def due(self) -> str:
        """Sorted set: ``kind|run|...`` -> due time: retries, compensation retries and hooks."""
        return f"{self.prefix}:due"

    @property
    def metrics(self) -> str:
        """Hash: fleet-wide counters and histogram buckets (``dagworker.metrics``)."""
        return f"{self.prefix}:metrics"

    def cache(self, digest: str) -> str:
        """String: the cached outputs (JSON list of fields) of tasks with this identity."""
        return f"{self.prefix}:cache:{digest}"

    @property
    def reconciler_lock(self) -> str:
        return f"{self.prefix}:reconciler:lock"

    @property
    def progress(self) -> str:
        """Hash: run id -> ``<version>:<tasks done>|<since>``, for the reconciler's stall check."""
        return f"{self.prefix}:reconciler:progress"

    # -- kombu's own keys (the broker, when it is this Redis) ---------------------------------
    def broker_queue(self, queue: str) -> str:
        """List: the messages waiting in a Celery queue (kombu's ``global_keyprefix``)."""
        return f"{self.prefix}:kombu:{queue}"

    @property
    def broker_unacked(self) -> str:
        """Hash: delivery tag -> message delivered to a worker and not yet acknowledged."""
        return f"{self.prefix}:kombu:unacked"

    # -- registered pipelines, triggers, schedules --------------------------------------------
    # All share the hash tag ``{catalog}`` so one WATCH/MULTI may touch any of them (Cluster).
    @property
    def catalog(self) -> str:
        """Sorted set: registered pipeline name -> time its latest version was registered."""
        return f"{self.prefix}:{{catalog}}:names"

    def catalog_versions(self, name: str) -> str:
        """Hash: version -> JSON (content hash, registration order and time, pipeline JSON)."""
        return f"{self.prefix}:{{catalog}}:versions:{name}"

    def catalog_meta(self, name: str) -> str:
        """Hash: latest version, its events (JSON list), registration time."""
        return f"{self.prefix}:{{catalog}}:meta:{name}"

    def subscribers(self, event: str) -> str:
        """Set: names of pipelines whose latest version lists ``event`` in triggers.events."""
        return f"{self.prefix}:{{catalog}}:event:{event}"

    @property
    def schedules(self) -> str:
        """Sorted set: scheduled pipeline name -> next fire time (authoritative; claimed by CAS)."""
        return f"{self.prefix}:{{catalog}}:schedules"

    @property
    def schedules_queued(self) -> str:
        """Set: scheduled pipelines holding a queued fire (overlap: queue)."""
        return f"{self.prefix}:{{catalog}}:schedules:queued"

    def schedule(self, name: str) -> str:
        """Hash: spec (JSON), spec hash, anchor, version, last run and slot, queued, counters."""
        return f"{self.prefix}:{{catalog}}:schedule:{name}"

    def schedule_fires(self, name: str) -> str:
        """List: the latest fire decisions of a schedule (JSON: slot, at, action, run), newest
        first, capped."""
        return f"{self.prefix}:{{catalog}}:schedule:{name}:fires"

    def schedule_lock(self, name: str) -> str:
        return f"{self.prefix}:{{catalog}}:schedule:{name}:lock"

    # -- per run -----------------------------------------------------------------------------
    def run(self, run_id: str) -> str:
        """Hash: status, error, timestamps, version (commit fence), counters."""
        return f"{self.prefix}:run:{{{run_id}}}"

    def pipeline(self, run_id: str) -> str:
        """String: the validated pipeline JSON, written once at submit."""
        return f"{self.prefix}:run:{{{run_id}}}:pipeline"

    def lock(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:lock"

    def nodes(self, run_id: str) -> str:
        """Hash: ``<slug>`` -> node state; ``<slug>:wait`` -> unsettled dependency count."""
        return f"{self.prefix}:run:{{{run_id}}}:nodes"

    def node(self, run_id: str, slug: str) -> str:
        """Hash: counters of one node (tasks, done, completed, failed, ...) and timestamps."""
        return f"{self.prefix}:run:{{{run_id}}}:node:{slug}"

    def task(self, run_id: str, slug: str, index: int) -> str:
        """Hash: state, attempt, spec (decided inputs), timestamps, worker, error, outputs."""
        return f"{self.prefix}:run:{{{run_id}}}:task:{slug}:{index}"

    def history(self, run_id: str, slug: str, index: int) -> str:
        """List: one JSON entry per finished attempt (times, worker, outcome, error)."""
        return f"{self.prefix}:run:{{{run_id}}}:hist:{slug}:{index}"

    def outputs(self, run_id: str, slug: str, index: int) -> str:
        """List: the committed artifacts of one task, in emission order."""
        return f"{self.outputs_prefix(run_id)}{slug}:{index}"

    def outputs_prefix(self, run_id: str, slug: str | None = None) -> str:
        """What every outputs list key of a run (of one node of it) starts with: scripts that
        read artifacts by id or by task index (``begin_task.lua``, ``read_outputs.lua``) build
        the keys from it."""
        base = f"{self.prefix}:run:{{{run_id}}}:out:"
        return base if slug is None else f"{base}{slug}:"

    def staging(self, run_id: str, slug: str, index: int, token: str) -> str:
        """List: artifacts of one delivery being written; renamed to outputs by the winner."""
        return f"{self.prefix}:run:{{{run_id}}}:stage:{slug}:{index}:{token}"

    def counts(self, run_id: str, slug: str) -> str:
        """Hash: task index -> number of artifacts it committed."""
        return f"{self.prefix}:run:{{{run_id}}}:counts:{slug}"

    def settle(self, run_id: str) -> str:
        """Set: slugs whose tasks are all done, waiting for the orchestrator to settle them."""
        return f"{self.prefix}:run:{{{run_id}}}:settle"

    def launching(self, run_id: str) -> str:
        """Sorted set: slug -> claim time, for nodes claimed whose launch has not finished."""
        return f"{self.prefix}:run:{{{run_id}}}:launching"

    def outbox(self, run_id: str) -> str:
        """Sorted set: ``<slug>|<first>|<last>`` batches claimed but not confirmed published."""
        return f"{self.prefix}:run:{{{run_id}}}:outbox"

    def children(self, run_id: str) -> str:
        """Set: ids of the child runs this run's sub-pipeline nodes started."""
        return f"{self.prefix}:run:{{{run_id}}}:children"

    def comp_settle(self, run_id: str) -> str:
        """Set: slugs whose compensations are all finished, waiting for the orchestrator."""
        return f"{self.prefix}:run:{{{run_id}}}:comp:settle"

    def comp_launching(self, run_id: str) -> str:
        """Sorted set: slug -> claim time, for compensations claimed but not all published."""
        return f"{self.prefix}:run:{{{run_id}}}:comp:launching"

    def notable(self, run_id: str, slug: str) -> str:
        """Sorted set: task index -> time, for tasks of a node that failed or were retried."""
        return f"{self.prefix}:run:{{{run_id}}}:notable:{slug}"

    def events(self, run_id: str) -> str:
        """List: status transitions and notable events, JSON lines, in order."""
        return f"{self.prefix}:run:{{{run_id}}}:events"

    def run_keys(self, run_id: str) -> list[str]:
        """Every key of a run that is not per node or per task (``node_keys``, ``task_keys``).
        The run hash is not here: the retention sweep deletes it first, atomically."""
        return [
            self.pipeline(run_id),
            self.lock(run_id),
            self.settle(run_id),
            self.launching(run_id),
            self.outbox(run_id),
            self.children(run_id),
            self.comp_settle(run_id),
            self.comp_launching(run_id),
            self.events(run_id),
        ]

    def node_keys(self, run_id: str, slug: str) -> list[str]:
        """The keys of one node that are not per task (the node hash last)."""
        return [self.counts(run_id, slug), self.notable(run_id, slug), self.node(run_id, slug)]

    def task_keys(self, run_id: str, slug: str, index: int) -> list[str]:
        """The keys of one task (staging lists are not here: they expire by themselves)."""
        return [
            self.task(run_id, slug, index),
            self.history(run_id, slug, index),
            self.outputs(run_id, slug, index),
        ]

    def run_pattern(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}*"
