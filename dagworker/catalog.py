"""Registered pipelines: validated versions stored in Redis, with their trigger and schedule
indexes.

A version is the pipeline's own ``version`` when set, else the next integer. Its content hash
(the pipeline without its version) makes registering the same content again a no-op; different
content under an existing explicit version is refused, so a version never changes once
registered. The latest version is the one registered last: it alone is subscribed to events and
scheduled, and both indexes are rewritten in the same transaction as the version itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

from dagworker import clock
from dagworker.errors import PipelineNotRegistered, VersionConflict
from dagworker.keys import Keys
from dagworker.pipeline import Pipeline, Schedule


class Registration(NamedTuple):
    name: str
    version: str


@dataclass(frozen=True)
class VersionInfo:
    version: str
    content_hash: str
    registered_at: float
    order: int


@dataclass(frozen=True)
class Entry:
    """One registered pipeline: its versions in registration order and the latest."""

    name: str
    latest: str
    versions: list[VersionInfo]
    events: list[str] = field(default_factory=list)
    scheduled: bool = False


def content_hash(pipeline: Pipeline) -> str:
    """SHA-256 of the pipeline without its version, keys sorted (the same content, same hash)."""
    body = pipeline.model_dump(mode="json", exclude_defaults=True, exclude={"version"})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def split_ref(ref: str, version: str | int | None = None) -> tuple[str, str | None]:
    """``name``, ``name@3`` (and an explicit ``version``, which must agree) -> (name, version)."""
    name, sep, at_version = ref.partition("@")
    if sep and not at_version:
        raise PipelineNotRegistered(f"{ref!r}: write NAME or NAME@VERSION")
    chosen = None if version is None else str(version)
    if sep and chosen is not None and chosen != at_version:
        raise PipelineNotRegistered(f"{ref!r} and version {chosen!r} disagree; give one")
    return name, chosen if chosen is not None else (at_version or None)


def _schedule_hash(schedule: Schedule) -> str:
    return hashlib.sha256(schedule.model_dump_json().encode()).hexdigest()


def _auto_version(versions: dict[str, Any]) -> str:
    numbers = [int(v) for v in versions if v.isdigit()]
    return str(max(numbers, default=0) + 1)


class Catalog:
    """Registered pipelines under one deployment's key prefix."""

    def __init__(self, r: Any, keys: Keys) -> None:
        # Any: a decode_responses client (the Store's), whose replies are str.
        self.r = r
        self.keys = keys

    def register(self, pipeline: Pipeline) -> tuple[Registration, bool]:
        """Store a validated pipeline; (name and version, whether a new version was created)."""
        name, digest = pipeline.name, content_hash(pipeline)
        k = self.keys
        watched = [k.catalog_versions(name), k.catalog_meta(name), k.schedule(name)]
        with self.r.pipeline() as txn:
            while True:
                try:
                    # WATCH closes the race of two concurrent registrations of one name: both
                    # would pick the same auto version, or both create one explicit version.
                    txn.watch(*watched)
                    versions = {v: json.loads(raw) for v, raw in txn.hgetall(watched[0]).items()}
                    latest = txn.hget(watched[1], "latest")
                    schedule_state = txn.hgetall(watched[2])
                    if pipeline.version is not None:
                        version = str(pipeline.version)
                        if version in versions:
                            if versions[version]["hash"] == digest:
                                return Registration(name, version), False
                            raise VersionConflict(
                                f"pipeline {name!r} version {version!r} is already registered "
                                "with different content; registered versions never change: "
                                "give the pipeline a new version (or remove 'version' to get "
                                "the next number)"
                            )
                        stored = pipeline
                    else:
                        if latest is not None and versions[latest]["hash"] == digest:
                            return Registration(name, latest), False
                        version = _auto_version(versions)
                        stored = pipeline.model_copy(update={"version": int(version)})
                    txn.multi()
                    self._stage(txn, stored, version, digest, len(versions) + 1, schedule_state)
                    if latest is not None:
                        self._unsubscribe(txn, name, json.loads(versions[latest]["pipeline"]))
                    txn.execute()
                    return Registration(name, version), True
                except redis.WatchError:
                    continue

    def _stage(
        self,
        txn: Any,
        pipeline: Pipeline,
        version: str,
        digest: str,
        order: int,
        schedule_state: dict[str, str],
    ) -> None:
        k, name, at = self.keys, pipeline.name, time.time()
        record = {
            "version": version,
            "hash": digest,
            "registered_at": at,
            "order": order,
            "pipeline": pipeline.to_json(),
        }
        txn.hset(k.catalog_versions(name), version, json.dumps(record))
        events = pipeline.triggers.events if pipeline.triggers else []
        txn.hset(
            k.catalog_meta(name),
            mapping={"latest": version, "events": json.dumps(events), "registered_at": at},
        )
        txn.zadd(k.catalog, {name: at})
        for event in events:
            txn.sadd(k.subscribers(event), name)
        schedule = pipeline.schedule
        if schedule is None:
            txn.zrem(k.schedules, name)
            txn.srem(k.schedules_queued, name)
            txn.delete(k.schedule(name))
            return
        spec_hash = _schedule_hash(schedule)
        txn.hset(k.schedule(name), mapping={"version": version, "spec": schedule.model_dump_json()})
        if schedule_state.get("spec_hash") == spec_hash:
            return  # same clock: keep the next fire time (a new version does not reset it)
        anchor = at
        txn.hset(k.schedule(name), mapping={"spec_hash": spec_hash, "anchor": anchor})
        txn.zadd(k.schedules, {name: clock.next_fire(schedule, anchor, at)})

    def _unsubscribe(self, txn: Any, name: str, previous: dict[str, Any]) -> None:
        """Remove the previous latest version's subscriptions (the new ones are added after)."""
        for event in (previous.get("triggers") or {}).get("events", []):
            txn.srem(self.keys.subscribers(event), name)

    # -- reading -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.r.zrange(self.keys.catalog, 0, -1))

    def entry(self, name: str) -> Entry:
        meta = self.r.hgetall(self.keys.catalog_meta(name))
        if not meta:
            raise self._not_registered(name)
        infos = [
            VersionInfo(v["version"], v["hash"], float(v["registered_at"]), int(v["order"]))
            for v in map(json.loads, self.r.hvals(self.keys.catalog_versions(name)))
        ]
        return Entry(
            name=name,
            latest=meta["latest"],
            versions=sorted(infos, key=lambda i: i.order),
            events=json.loads(meta.get("events") or "[]"),
            scheduled=self.r.zscore(self.keys.schedules, name) is not None,
        )

    def entries(self) -> list[Entry]:
        return [self.entry(name) for name in self.names()]

    def get(self, name: str, version: str | int | None = None) -> Pipeline:
        """The stored pipeline (``version`` set); the latest one when ``version`` is None."""
        if version is None:
            latest = self.r.hget(self.keys.catalog_meta(name), "latest")
            if latest is None:
                raise self._not_registered(name)
            version = latest
        raw = self.r.hget(self.keys.catalog_versions(name), str(version))
        if raw is None:
            if not self.r.exists(self.keys.catalog_meta(name)):
                raise self._not_registered(name)
            known = ", ".join(i.version for i in self.entry(name).versions)
            raise PipelineNotRegistered(
                f"pipeline {name!r} has no version {str(version)!r} (registered: {known})"
            )
        return Pipeline.model_validate_json(json.loads(raw)["pipeline"])

    def subscribers(self, event: str) -> list[str]:
        return sorted(self.r.smembers(self.keys.subscribers(event)))

    def _not_registered(self, name: str) -> PipelineNotRegistered:
        from dagworker.errors import did_you_mean

        hint = did_you_mean(name, self.names())
        return PipelineNotRegistered(
            f"no registered pipeline {name!r};"
            f"{hint or ' register it with: dagworker pipelines register FILE'}"
        )
