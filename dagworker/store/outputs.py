"""Artifacts in Redis: how a task's outputs are encoded, staged and read back.

A task's outputs are a list per task (``out:<node>:<task>``) and a node's counts hash says
how many each task has; reads are batched per node (``read_outputs.lua``) or chunked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dagworker.artifact import Artifact, artifact_id
from dagworker.errors import StoreError
from dagworker.store.base import StoreBase

#: Outputs up to this many go to the completion script inline; more are staged in chunks.
INLINE_OUTPUTS = 200
STAGE_CHUNK = 1_000
STAGING_TTL_S = 86_400
READ_CHUNK = 5_000


def encode_artifact(origin: str | None, fields: Mapping[str, Any]) -> str:
    return json.dumps({"o": origin, "f": fields}, separators=(",", ":"))


def decode_artifact(node: str, task: int, k: int, raw: str | bytes) -> Artifact:
    data = json.loads(raw)
    return Artifact(artifact_id(node, task, k), node, data["o"], data["f"])


class OutputStore(StoreBase):
    """Staging and reading artifacts."""

    def stage_outputs(self, key: str, encoded: Sequence[str]) -> None:
        """Append outputs of a delivery in progress; they expire if the worker dies."""
        pipe = self.r.pipeline(transaction=False)
        if encoded:
            pipe.rpush(key, *encoded)
        pipe.expire(key, STAGING_TTL_S)
        pipe.execute()

    # -- artifacts ------------------------------------------------------------------------------

    def iter_artifacts(self, run_id: str, slug: str) -> Iterator[Artifact]:
        """Every committed artifact of a node: task order, then emission order.

        Tasks with few outputs (the usual fan-out: one each) are read many per round trip;
        a task with very many outputs is streamed in chunks, so memory stays bounded either way.
        """
        counts = self.r.hgetall(self.keys.counts(run_id, slug))
        return self._iter_outputs(run_id, self._output_plan(slug, counts))

    def read_artifacts(
        self,
        run_id: str,
        slugs: Sequence[str],
        heartbeat: Callable[[], None] | None = None,
        every: int = READ_CHUNK,
        replies: Mapping[str, Any] | None = None,
    ) -> dict[str, list[Artifact]]:
        """The artifacts of several nodes (as ``iter_artifacts``), in one pipelined round trip
        of ``read_outputs.lua`` (one per node) when each has at most READ_CHUNK; the outputs of
        larger nodes follow in pipelined chunks, ``heartbeat`` called every ``every`` of them.
        ``replies``: ``read_outputs.lua`` replies already read (``commit_and_read``)."""
        have = dict(replies or {})
        todo = [s for s in slugs if s not in have]
        if todo:
            calls = [self._read_outputs_call(run_id, s) for s in todo]
            for slug, reply in zip(todo, self._eval_pipeline(calls), strict=True):
                if isinstance(reply, Exception):
                    raise reply
                have[slug] = reply
        out: dict[str, list[Artifact]] = {slug: [] for slug in slugs}
        plan: list[tuple[str, int, int]] = []
        read = 0
        for slug in slugs:
            inline, *flat = have[slug]
            if int(inline):
                for index_s, raw in sorted(
                    zip(flat[::2], flat[1::2], strict=True), key=lambda p: int(p[0])
                ):
                    index = int(index_s)
                    out[slug].extend(decode_artifact(slug, index, k, v) for k, v in enumerate(raw))
                    read += len(raw)
            else:
                counts = dict(zip(flat[::2], flat[1::2], strict=True))
                plan += self._output_plan(slug, counts)
        for i, artifact in enumerate(self._iter_outputs(run_id, plan), read + 1):
            out[artifact.node].append(artifact)
            if heartbeat is not None and i % every == 0:
                heartbeat()
        return out

    def inline_outputs(self, run_id: str, slugs: Sequence[str], most: int) -> dict[str, Any] | None:
        """``read_outputs.lua`` replies for these nodes (``read_artifacts`` takes them), in one
        round trip, when each has at most ``most`` artifacts; None when one has more (what
        is read is bounded by ``most`` per node either way)."""
        calls = [self._read_outputs_call(run_id, s, most, whole=True) for s in slugs]
        replies = self._eval_pipeline(calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            if not int(reply[0]):
                return None
        return dict(zip(slugs, replies, strict=True))

    def _read_outputs_call(
        self, run_id: str, slug: str, most: int = READ_CHUNK, whole: bool = False
    ) -> tuple[str, list[str], list[Any]]:
        return (
            "read_outputs",
            [self.keys.counts(run_id, slug)],
            [self.keys.outputs_prefix(run_id, slug), most, 1 if whole else 0],
        )

    @staticmethod
    def _output_plan(slug: str, counts: Mapping[str, str]) -> list[tuple[str, int, int]]:
        """``(slug, task index, outputs)`` in task order; tasks without outputs left out."""
        tasks = sorted(int(i) for i in counts)
        return [(slug, index, n) for index in tasks if (n := int(counts[str(index)])) > 0]

    def _iter_outputs(
        self, run_id: str, plan: Sequence[tuple[str, int, int]]
    ) -> Iterator[Artifact]:
        batch: list[tuple[str, int, int]] = []
        size = 0
        for slug, index, n in plan:
            if n > READ_CHUNK:
                yield from self._read_outputs(run_id, batch)
                batch, size = [], 0
                key = self.keys.outputs(run_id, slug, index)
                for start in range(0, n, READ_CHUNK):
                    raw = self.r.lrange(key, start, min(n, start + READ_CHUNK) - 1)
                    for offset, item in enumerate(raw):
                        yield decode_artifact(slug, index, start + offset, item)
                continue
            batch.append((slug, index, n))
            size += n
            if size >= READ_CHUNK:
                yield from self._read_outputs(run_id, batch)
                batch, size = [], 0
        yield from self._read_outputs(run_id, batch)

    def _read_outputs(
        self, run_id: str, tasks: Sequence[tuple[str, int, int]]
    ) -> Iterator[Artifact]:
        """The outputs of several tasks in one pipelined round trip."""
        if not tasks:
            return
        pipe = self.r.pipeline(transaction=False)
        for slug, index, n in tasks:
            pipe.lrange(self.keys.outputs(run_id, slug, index), 0, n - 1)
        for (slug, index, _), raw in zip(tasks, pipe.execute(), strict=True):
            for k, item in enumerate(raw):
                yield decode_artifact(slug, index, k, item)

    def fetch_artifacts(self, run_id: str, ids: Sequence[str]) -> list[Artifact]:
        """Artifacts by id, in the order given; one round trip per 5,000 distinct tasks."""
        groups: dict[tuple[str, int], list[int]] = {}
        parsed: list[tuple[str, int, int]] = []
        for aid in ids:
            node_slug, task_s, k_s = aid.rsplit(":", 2)
            parsed.append((node_slug, int(task_s), int(k_s)))
            groups.setdefault((node_slug, int(task_s)), []).append(int(k_s))
        pipe = self.r.pipeline(transaction=False)
        order = list(groups)
        for node, task in order:
            wanted = groups[(node, task)]
            if len(wanted) == 1:
                pipe.lindex(self.keys.outputs(run_id, node, task), wanted[0])
            else:
                pipe.lrange(self.keys.outputs(run_id, node, task), min(wanted), max(wanted))
        found: dict[tuple[str, int, int], Artifact] = {}
        for (node, task), raw in zip(order, pipe.execute(), strict=True):
            wanted = groups[(node, task)]
            if len(wanted) == 1:
                items = {wanted[0]: raw}
            else:
                items = {min(wanted) + i: v for i, v in enumerate(raw)}
            for k, value in items.items():
                if value is None:
                    raise StoreError(f"artifact {node}:{task}:{k} of run {run_id!r} is missing")
                found[(node, task, k)] = decode_artifact(node, task, k, value)
        return [found[p] for p in parsed]

    def task_outputs(self, run_id: str, slug: str, index: int) -> list[Artifact]:
        raw = self.r.lrange(self.keys.outputs(run_id, slug, index), 0, -1)
        return [decode_artifact(slug, index, k, v) for k, v in enumerate(raw)]
