"""Run state in Redis: runs, nodes and tasks (with ``lock``, the only code that talks to Redis).

Every atomic step is a named Lua script in ``dagworker/lua``; ``Store`` wraps them with typed
methods and does the plain reads. It knows nothing about Celery. Artifacts and compensations
are its parts in ``outputs`` and ``compensations``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError

from dagworker.artifact import Artifact
from dagworker.errors import IllegalTransition, RunNotFound, StoreError
from dagworker.lock import RunLock
from dagworker.settings import Settings
from dagworker.states import RunState
from dagworker.store.base import connect, now
from dagworker.store.compensations import CompensationStore
from dagworker.store.outputs import OutputStore, decode_artifact
from dagworker.store.records import Prefetched, TaskBegin, TaskFinish, _HashFields
from dagworker.store.retention import RetentionStore

if TYPE_CHECKING:
    from dagworker.handoff import Handoff

#: At most this many arguments per merged commit op (Lua's unpack has a stack limit).
MERGE_ARGS = 1_000
#: begin_task.lua returns the inputs of a task whose spec is at most this long (a task reading
#: a handful of artifacts; an aggregate over thousands reads them in pipelined chunks instead).
BEGIN_INPUTS_SPEC_BYTES = 2_048


class Store(OutputStore, CompensationStore, RetentionStore):
    """Runs, nodes and tasks: creation, reads, the run lock, commits, launches, completions."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(connect(settings.redis_url), settings)

    # -- runs -----------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        record: Mapping[str, Any],
        pipeline_json: str,
        waits: Mapping[str, int],
        events: Sequence[Mapping[str, Any]] = (),
        ops: Sequence[tuple[Any, ...]] = (),
    ) -> int:
        """Write a new run with all nodes pending; refuses to overwrite an existing run id.

        ``events`` are appended after the "pending" one, and ``ops`` (``commit`` ops, e.g. the
        roots' claims, tasks and messages) applied, in the same atomic step. Returns the run's
        version (1).
        """
        k = self.keys
        # The run hash is new: the ops' increments of its counters (the roots' nodes_running
        # and tasks_total) and the version fence start in its first HSET, not in commands of
        # their own (commit.lua's "new" mode returns 1 without counting the version). Only
        # the increments before any other op on the run hash fold; the rest stay in order.
        record = {**record, "version": 1}
        rest: list[tuple[Any, ...]] = []
        folding = True
        for op in ops:
            if op[0] != k.run(run_id):
                rest.append(op)
            elif folding and op[1] == "hincrby":
                record[op[2]] = int(record.get(op[2]) or 0) + int(op[3])
            else:
                folding = False
                rest.append(op)
        ops = rest
        nodes: list[Any] = []
        for slug, wait in waits.items():
            nodes += [slug, "pending", f"{slug}:wait", wait]
        events_json = [json.dumps({"at": record["created_at"], "status": "pending"})]
        events_json += [json.dumps(dict(e)) for e in events]
        fields = [x for item in record.items() for x in item]
        creation: list[tuple[Any, ...]] = [
            (k.run(run_id), "hset", *fields),
            (k.pipeline(run_id), "set", pipeline_json),
            # in parts: one Lua call takes some thousands of arguments at most
            *((k.nodes(run_id), "hset", *nodes[i : i + 400]) for i in range(0, len(nodes), 400)),
            (k.runs_active, "zadd", record["created_at"], run_id),
            (k.runs_all, "zadd", record["created_at"], run_id),
            (k.events(run_id), "rpush", *events_json),
        ]
        # One script (commit.lua in its "new" mode): refused whole if the id is taken.
        keys, args = self._commit_args(run_id, "new", [*creation, *ops], None)
        version = int(self._eval_pipeline([("commit", keys, args)])[0])
        if version == -2:
            raise StoreError(f"run {run_id!r} already exists")
        return version

    def copy_nodes(self, src: str, dst: str, slugs: Sequence[str]) -> tuple[int, list[str]]:
        """Copy settled nodes (counters and artifacts) of run ``src`` into the new run ``dst``.

        Server-side COPY: the artifacts never travel through the client. Returns the number of
        tasks the copied nodes had and the keys written (the caller unlinks them when the new
        run cannot be created). Task hashes are not copied: the old run keeps its history.

        The reads and the copy happen in a transaction watching the source's run hash, which
        a retry or rollback of the source changes and the retention sweep deletes first
        (``purge_run.lua``): a source deleted meanwhile raises RunNotFound, one that is no
        longer finished IllegalTransition, and nothing is copied.
        """
        k = self.keys
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(k.run(src))
                    status = pipe.hget(k.run(src), "status")
                    if status is None:
                        raise RunNotFound(src)
                    if not RunState(status).terminal:
                        raise IllegalTransition(
                            f"run {src} is {status}: replay a run that has ended"
                        )
                    # (read after the WATCH: a change of the source from here aborts the copy)
                    read = self.r.pipeline(transaction=False)
                    for slug in slugs:
                        read.hgetall(k.counts(src, slug))
                        read.hget(k.node(src, slug), "tasks")
                    replies = read.execute()
                    pipe.multi()
                    written: list[str] = []
                    for i, slug in enumerate(slugs):
                        pairs = [(k.node(src, slug), k.node(dst, slug))]
                        pairs.append((k.counts(src, slug), k.counts(dst, slug)))
                        pairs += [
                            (k.outputs(src, slug, int(index)), k.outputs(dst, slug, int(index)))
                            for index in replies[2 * i]
                        ]
                        for key, to in pairs:
                            pipe.copy(key, to, replace=True)
                            written.append(to)
                        pipe.hset(k.node(dst, slug), "reused_from", src)
                    pipe.execute()
                except WatchError:
                    continue
            total = sum(int(replies[2 * i + 1] or 0) for i in range(len(slugs)))
            return total, written

    def run(self, run_id: str) -> dict[str, str]:
        data: dict[str, str] = self.r.hgetall(self.keys.run(run_id))
        if "status" not in data:  # (as run_exists: a late write leaves a hash without one)
            raise RunNotFound(run_id)
        return data

    def run_and_pipeline(self, run_id: str) -> tuple[dict[str, str], str]:
        """The run hash and its pipeline JSON, one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.run(run_id))
        pipe.get(self.keys.pipeline(run_id))
        run, text = pipe.execute()
        if "status" not in run or text is None:
            raise RunNotFound(run_id)
        return run, text

    def pipeline_json(self, run_id: str) -> str:
        text: str | None = self.r.get(self.keys.pipeline(run_id))
        if text is None:
            raise RunNotFound(run_id)
        return text

    def nodes(self, run_id: str) -> dict[str, str]:
        data: dict[str, str] = self.r.hgetall(self.keys.nodes(run_id))
        return data

    def node_fields(self, run_id: str, prefetch: Sequence[str]) -> _HashFields:
        """The run's node-state hash: ``prefetch`` in one HMGET, other fields on demand."""
        return _HashFields(self.r, self.keys.nodes(run_id), prefetch)

    def node_counters(self, run_id: str, slugs: Iterable[str]) -> dict[str, dict[str, str]]:
        slugs = list(slugs)
        pipe = self.r.pipeline(transaction=False)
        for slug in slugs:
            pipe.hgetall(self.keys.node(run_id, slug))
        return dict(zip(slugs, pipe.execute(), strict=True))

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(self.keys.events(run_id), 0, -1)]

    def run_ids(self, active_only: bool = False, limit: int = 50) -> list[str]:
        key = self.keys.runs_active if active_only else self.keys.runs_all
        ids: list[str] = self.r.zrevrange(key, 0, limit - 1)
        return ids

    def settle_pending(self, run_id: str) -> set[str]:
        members: set[str] = self.r.smembers(self.keys.settle(run_id))
        return members

    def lock(self, run_id: str) -> RunLock:
        return RunLock(self.r, self.keys.lock(run_id), self.settings.lock_timeout)

    def lock_run(self, run_id: str) -> tuple[RunLock, dict[str, str]]:
        """Take the run lock and read the run hash in the same round trip.

        The caller must release the lock (``commit(..., lock)`` does on success).
        """
        lock = self.lock(run_id)
        (run,) = lock.acquire(lambda pipe: pipe.hgetall(self.keys.run(run_id)))
        if not run:
            lock.release()
            raise RunNotFound(run_id)
        return lock, run

    def lock_for_settle(
        self, run_id: str, fields: Sequence[str] = (), slugs: Sequence[str] = ()
    ) -> tuple[RunLock, dict[str, str], set[str], Prefetched]:
        """Take the run lock; read the run, the settle set and, when the caller can guess what
        it will settle, ``decide_reads(fields, slugs)`` in the same round trip.

        The run (with its version) is read before everything else: a stale orchestrator's
        commit landing after it moves the version, so state read after its commit can never be
        committed against (commit.lua refuses).
        """
        lock = self.lock(run_id)
        k = self.keys
        wanted = list(dict.fromkeys(fields))

        def reads(pipe: Any) -> None:
            pipe.hgetall(k.run(run_id))
            pipe.smembers(k.settle(run_id))
            if wanted:
                pipe.hmget(k.nodes(run_id), wanted)
            for slug in slugs:
                pipe.hgetall(k.node(run_id, slug))

        run, pending, *rest = lock.acquire(reads)
        if not run:
            lock.release()
            raise RunNotFound(run_id)
        values = rest.pop(0) if wanted else []
        prefetched = Prefetched(
            dict(zip(wanted, values, strict=True)), dict(zip(slugs, rest, strict=True))
        )
        return lock, run, set(pending), prefetched

    def settle_sizes(self, run_id: str) -> tuple[int, int]:
        """Sizes of the settle and compensation settle sets, one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.scard(self.keys.settle(run_id))
        pipe.scard(self.keys.comp_settle(run_id))
        forward, backward = pipe.execute()
        return int(forward), int(backward)

    def decide_reads(
        self,
        run_id: str,
        prefetch: Sequence[str],
        slugs: Sequence[str],
        have: Prefetched | None = None,
    ) -> tuple[_HashFields, dict[str, dict[str, str]]]:
        """Node-state fields (``node_fields``) and node counters (``node_counters``) in one
        pipelined round trip, none when ``have`` (read with the lock) holds them all."""
        have = have or Prefetched({}, {})
        wanted = [f for f in dict.fromkeys(prefetch) if f not in have.fields]
        missing = [s for s in slugs if s not in have.counters]
        fields = _HashFields(self.r, self.keys.nodes(run_id), [])
        fields.cache.update(have.fields)
        counters = {s: have.counters[s] for s in slugs if s in have.counters}
        if wanted or missing:
            pipe = self.r.pipeline(transaction=False)
            if wanted:
                pipe.hmget(self.keys.nodes(run_id), wanted)
            for slug in missing:
                pipe.hgetall(self.keys.node(run_id, slug))
            replies = pipe.execute()
            values = replies.pop(0) if wanted else []
            fields.cache.update(zip(wanted, values, strict=True))
            counters.update(zip(missing, replies, strict=True))
        return fields, {s: counters[s] for s in slugs}

    @staticmethod
    def event_json(at: float, status: RunState, error: str | None = None) -> str:
        return json.dumps({"at": at, "status": status.value, "error": error})

    def end_ops(
        self, run_id: str, state: RunState, at: float, error: str | None, hooks: bool = True
    ) -> list[tuple[Any, ...]]:
        """Commit ops that end a run; its hooks (unless ``hooks`` is False: nothing to call)
        are scheduled in the same atomic commit."""
        k = self.keys
        ops: list[tuple[Any, ...]] = [
            (k.run(run_id), "hset", "status", state.value),
            (k.run(run_id), "hset", "finished_at", at),
            (k.run(run_id), "hset", "error", error or ""),
            (k.runs_active, "zrem", run_id),
            (k.runs_ended, "zadd", at, run_id),
            (k.events(run_id), "rpush", self.event_json(at, state, error)),
        ]
        if hooks:
            ops.append((k.due, "zadd", at, f"hook|{run_id}|{state.value}"))
        return ops

    def commit(
        self,
        run_id: str,
        version: int,
        ops: Sequence[tuple[Any, ...]],
        lock: RunLock | None = None,
    ) -> int:
        """Apply ops (``(key, verb, *args)``) iff the run's version is unchanged; -1 if stale.

        With ``lock``, a successful commit releases it in the same script.
        """
        return self.commit_and_read(run_id, version, ops, lock)[0]

    def commit_and_read(
        self,
        run_id: str,
        version: int,
        ops: Sequence[tuple[Any, ...]],
        lock: RunLock | None = None,
        read: Sequence[str] = (),
    ) -> tuple[int, dict[str, Any]]:
        """``commit``, with the artifacts of the nodes ``read`` read in the same round trip
        (``read_outputs.lua`` replies, for ``read_artifacts(..., replies=)``; committed
        artifacts never change, so reading them after the commit is reading them later)."""
        keys, args = self._commit_args(run_id, version, ops, lock)
        calls = [("commit", keys, args), *(self._read_outputs_call(run_id, s) for s in read)]
        replies = self._eval_pipeline(calls)
        if isinstance(replies[0], Exception):
            raise replies[0]
        result = int(replies[0])
        if lock is not None and result >= 0:
            lock.released_by_commit()
        # A read that failed (a script the server lost meanwhile) is simply read again later.
        reads = {
            s: r for s, r in zip(read, replies[1:], strict=True) if not isinstance(r, Exception)
        }
        return result, reads

    def _commit_args(
        self,
        run_id: str,
        version: int | str,
        ops: Sequence[tuple[Any, ...]],
        lock: RunLock | None,
    ) -> tuple[list[str], list[Any]]:
        keys = [self.keys.run(run_id), self.keys.lock(run_id)]
        positions: dict[str, int] = {keys[0]: 1}
        encoded: list[list[Any]] = []
        # HSETs (SREMs) of one key become one command, as long as no other verb on that key
        # comes in between (so the order of writes to a key is kept).
        open_ops: dict[str, list[Any]] = {}
        for key, verb, *args in ops:
            if key not in positions:
                keys.append(key)
                positions[key] = len(keys)
            current = open_ops.get(key)
            if current is not None and current[1] == verb and len(current) < MERGE_ARGS:
                current.extend(args)
                continue
            op = [positions[key], verb, *args]
            encoded.append(op)
            if verb in ("hset", "srem"):
                open_ops[key] = op
            else:
                open_ops.pop(key, None)
        token = lock.token if lock is not None else ""
        # (how long a refused caller has the handoffs yield to it: one lock period)
        return keys, [version, json.dumps(encoded), token, self.settings.lock_timeout]

    # -- launching ------------------------------------------------------------------------------

    def launch_batch(
        self,
        run_id: str,
        slug: str,
        first: int,
        specs: Sequence[str],
        at: float,
        final: bool,
        push: tuple[str, Sequence[str]] | None = None,
    ) -> tuple[bool, int, bool]:
        """Persist a batch (``launch_batch.lua``); ``final`` also closes the launch. ``push``
        (a broker queue key on this Redis and the batch's envelopes) sends the messages in the
        same step instead of recording the batch in the outbox for the caller to publish.

        Returns (applied, the node's cursor after it, the node is ready to settle).
        """
        k = self.keys
        member = f"{slug}|{first}|{first + len(specs) - 1}"
        task_keys = [k.task(run_id, slug, first + i) for i in range(len(specs))]
        applied, cursor, ready = self._scripts["launch_batch"](
            keys=[
                k.node(run_id, slug),
                k.outbox(run_id),
                k.run(run_id),
                k.launching(run_id),
                k.settle(run_id),
                push[0] if push else k.outbox(run_id),
                *task_keys,
            ],
            args=[
                first,
                at,
                member,
                slug,
                "1" if final else "0",
                "1" if push else "0",
                *specs,
                *(push[1] if push else ()),
            ],
        )
        return bool(applied), int(cursor), bool(ready)

    def touch_launch(self, run_id: str, slug: str) -> None:
        """Mark a launch in progress as alive (XX: never re-add one that has finished)."""
        self.r.zadd(self.keys.launching(run_id), {slug: now()}, xx=True)

    def published_commands(self, run_id: str, slug: str, first: int, last: int) -> list[list[str]]:
        """The Redis commands that confirm an outbox batch as sent (``published``)."""
        return [["ZREM", self.keys.outbox(run_id), f"{slug}|{first}|{last}"]]

    def published(self, run_id: str, slug: str, first: int, last: int) -> None:
        for command in self.published_commands(run_id, slug, first, last):
            self.r.execute_command(*command)

    def finish_launch(self, run_id: str, slug: str, total: int) -> bool:
        k = self.keys
        ready = self._scripts["finish_launch"](
            keys=[k.node(run_id, slug), k.settle(run_id), k.launching(run_id)], args=[slug, total]
        )
        return bool(ready)

    def fail_launch(self, run_id: str, slug: str, error: str) -> bool:
        """Close a launch that cannot go on; the node will settle as failed. True if ready."""
        self.r.hset(self.keys.node(run_id, slug), mapping={"error": error, "launch_failed": 1})
        return self.finish_launch(run_id, slug, self.launch_cursor(run_id, slug))

    def launch_cursor(self, run_id: str, slug: str) -> int:
        return int(self.r.hget(self.keys.node(run_id, slug), "tasks") or 0)

    def stale_outbox(self, run_id: str, older_than: float) -> list[tuple[str, int, int]]:
        out = []
        for member in self.r.zrangebyscore(self.keys.outbox(run_id), "-inf", older_than):
            slug, first, last = member.rsplit("|", 2)
            out.append((slug, int(first), int(last)))
        return out

    def stale_launches(self, run_id: str, older_than: float) -> list[str]:
        slugs: list[str] = self.r.zrangebyscore(self.keys.launching(run_id), "-inf", older_than)
        return slugs

    def tasks_state(self, run_id: str, slug: str, first: int, last: int) -> list[tuple[str, int]]:
        pipe = self.r.pipeline(transaction=False)
        for i in range(first, last + 1):
            pipe.hmget(self.keys.task(run_id, slug, i), "state", "attempt")
        return [(s or "", int(a or 0)) for s, a in pipe.execute()]

    # -- tasks ----------------------------------------------------------------------------------

    def begin_task(
        self,
        run_id: str,
        slug: str,
        index: int,
        attempt: int,
        worker: str,
        *,
        want_run: bool = False,
    ) -> TaskBegin:
        """``want_run``: also return the run's fields a worker compiles it from (the caller
        has not compiled it), read with its status."""
        k = self.keys
        verdict, spec, state, *rest = self._scripts["begin_task"](
            keys=[k.run(run_id), k.task(run_id, slug, index)],
            args=[
                attempt,
                now(),
                worker,
                k.outputs_prefix(run_id),
                BEGIN_INPUTS_SPEC_BYTES,
                "1" if want_run else "0",
            ],
        )
        if verdict != "run":
            return TaskBegin(verdict, {}, state)
        epoch, fetched, run_input, no_cache, fingerprint, *pairs = rest
        run = None
        if fingerprint:
            run = {
                "input": run_input or "{}",
                "no_cache": no_cache or "",
                "pipeline_fp": fingerprint,
            }
        decoded = json.loads(spec) if spec else {}
        inputs: dict[str, Artifact] | None = None
        if "a" in decoded:
            ids = [aid for aids in decoded.get("in", {}).values() for aid in aids]
            inputs = {
                aid: Artifact(aid, aid.rsplit(":", 2)[0], origin, fields)
                for aid, (origin, fields) in zip(ids, decoded["a"], strict=True)
            }
        elif int(fetched):
            inputs = {}
            for aid, raw in zip(pairs[::2], pairs[1::2], strict=True):
                node, task_s, k_s = aid.rsplit(":", 2)
                if raw is None:
                    raise StoreError(f"artifact {aid} of run {run_id!r} is missing")
                inputs[aid] = decode_artifact(node, int(task_s), int(k_s), raw)
        return TaskBegin(verdict, decoded, state, epoch, inputs, run)

    def record_cache_hit(self, run_id: str, slug: str, index: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.task(run_id, slug, index), "cached", 1)
        pipe.hincrby(self.keys.node(run_id, slug), "cache_hits", 1)
        pipe.execute()

    def finish_task(
        self,
        run_id: str,
        slug: str,
        index: int,
        attempt: int,
        outcome: str,
        *,
        encoded_outputs: Sequence[str] = (),
        staged_key: str | None = None,
        staged_count: int = 0,
        error: str = "",
        traceback: str = "",
        handoff: Handoff | None = None,
    ) -> TaskFinish:
        k = self.keys
        staging = staged_key or k.staging(run_id, slug, index, "none")
        n_out = staged_count if staged_key else len(encoded_outputs)
        verdict, settle = self._scripts["finish_task"](
            keys=[
                k.run(run_id),
                k.node(run_id, slug),
                k.task(run_id, slug, index),
                k.outputs(run_id, slug, index),
                k.counts(run_id, slug),
                staging,
                k.settle(run_id),
                k.history(run_id, slug, index),
                k.notable(run_id, slug),
                k.nodes(run_id),
                *(handoff.keys if handoff else ()),
            ],
            args=[
                attempt,
                outcome,
                handoff.at if handoff else now(),
                index,
                slug,
                n_out,
                error,
                traceback,
                "1" if staged_key else "0",
                handoff.plan if handoff else "",
                *([] if staged_key else encoded_outputs),
            ],
        )
        code = int(settle)
        return TaskFinish(verdict, code == 1, code >= 2, code >= 3, code == 4)

    def retry_task(
        self,
        run_id: str,
        slug: str,
        index: int,
        attempt: int,
        delay: float,
        error: str,
        traceback: str,
        *,
        compensation: bool = False,
    ) -> bool:
        """Schedule the next attempt of a task (or of its compensation) in the due set."""
        at = now()
        kind = "comp" if compensation else "retry"
        member = f"{kind}|{run_id}|{slug}|{index}|{attempt + 1}"
        done = self._scripts["retry_task"](
            keys=[
                self.keys.task(run_id, slug, index),
                self.keys.history(run_id, slug, index),
                self.keys.due,
                self.keys.run(run_id),
                self.keys.notable(run_id, slug),
            ],
            args=[
                attempt,
                at,
                at + delay,
                member,
                error,
                traceback,
                "rb_" if compensation else "",
                "rolling_back" if compensation else "running",
                index,
            ],
        )
        return bool(done)

    def claim_due(self, lease: float, limit: int = 100) -> list[str]:
        """Lease due entries (``retry|run|slug|index|attempt`` or ``hook|run|event``)."""
        members: list[str] = self._scripts["claim_due"](
            keys=[self.keys.due], args=[now(), lease, limit]
        )
        return members

    def unschedule(self, member: str) -> None:
        self.r.zrem(self.keys.due, member)

    def claim_hooks(self, run_id: str, event: str) -> bool:
        """True for the first caller only: hooks of an event run once per run."""
        return bool(self.r.hsetnx(self.keys.run(run_id), f"hooks:{event}", now()))

    def history(self, run_id: str, slug: str, index: int) -> list[dict[str, Any]]:
        """Every finished attempt of a task and of its compensation, oldest first.

        A task that succeeded at its first attempt has no history list (one key less per task):
        its one attempt is described by the task hash.
        """
        entries = [
            json.loads(e) for e in self.r.lrange(self.keys.history(run_id, slug, index), 0, -1)
        ]
        task = self.task(run_id, slug, index)
        forward = [e for e in entries if e.get("kind", "task") == "task"]
        last_recorded = forward and int(forward[-1]["attempt"]) == int(task.get("attempt", 1))
        finished = task.get("finished_at") and task.get("state") in (
            "completed",
            "failed",
            "cancelled",
            "compensated",
        )
        if finished and not last_recorded and int(task.get("attempt", 1)) == 1:
            first = {
                "kind": "task",
                "attempt": 1,
                "state": "completed" if task["state"] == "compensated" else task["state"],
                "error": task.get("error", ""),
                "outputs": int(task.get("outputs", 0)),
                "started_at": float(task["started_at"]) if task.get("started_at") else None,
                "finished_at": float(task["finished_at"]),
                "worker": task.get("worker"),
            }
            entries.insert(0, first)
        return entries

    def notable_tasks(self, run_id: str, slug: str, limit: int = 20) -> list[int]:
        """Indices of a node's failed or retried tasks, first noticed first (at most limit)."""
        return [int(i) for i in self.r.zrange(self.keys.notable(run_id, slug), 0, limit - 1)]

    def task(self, run_id: str, slug: str, index: int) -> dict[str, str]:
        data: dict[str, str] = self.r.hgetall(self.keys.task(run_id, slug, index))
        return data

    def add_event(self, run_id: str, event: Mapping[str, Any]) -> None:
        self.r.rpush(self.keys.events(run_id), json.dumps(event))
