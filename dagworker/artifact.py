"""Artifacts: the JSON objects tasks produce, with an engine-assigned id and origin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Artifact:
    """One artifact of a run.

    ``id`` is ``<node>:<task index>:<emission index>``, unique within the run and stable across
    redeliveries. ``origin`` is the id of the root artifact it descends from, or None for a
    broadcast (aggregate output).
    """

    id: str
    node: str
    origin: str | None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def task_index(self) -> int:
        return int(self.id.rsplit(":", 2)[1])

    @property
    def emission_index(self) -> int:
        return int(self.id.rsplit(":", 1)[1])

    def sort_key(self) -> tuple[str, int, int]:
        """Ordering by id that treats the numeric parts as numbers (``a:2:0`` < ``a:10:0``)."""
        node, task, emit = self.id.rsplit(":", 2)
        return (node, int(task), int(emit))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "origin": self.origin, "fields": self.fields}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            id=data["id"],
            node=data["node"],
            origin=data.get("origin"),
            fields=data.get("fields") or {},
        )


def artifact_id(node: str, task_index: int, emission_index: int) -> str:
    return f"{node}:{task_index}:{emission_index}"
