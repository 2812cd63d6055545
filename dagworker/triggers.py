"""Triggers: an event starts every registered pipeline subscribed to it.

Subscriptions are the ``triggers.events`` of each pipeline's latest version, indexed in Redis
when it is registered (``Keys.subscribers``), so a fire reads one set and never scans the
catalog. The payload becomes each run's input and is checked against each pipeline's own input
schema: a pipeline that refuses it is reported and the others still start.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagworker.catalog import Catalog
from dagworker.errors import PipelineError, PipelineInvalid, Problem
from dagworker.pipeline import EVENT_PATTERN, Pipeline

_EVENT_RE = re.compile(EVENT_PATTERN)


@dataclass(frozen=True)
class FireOutcome:
    """What one fire did: the runs it started (pipeline name -> run id) and who refused."""

    event: str
    started: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def subscribers(self) -> int:
        return len(self.started) + len(self.refused)


def check_event(event: str) -> str:
    """The event name, or PipelineInvalid saying what an event name may contain."""
    if not (1 <= len(event) <= 128 and _EVENT_RE.match(event)):
        raise PipelineInvalid(
            [
                Problem(
                    f"event {event!r}",
                    "use 1-128 lower-case letters, digits and _ . - (starting with a letter "
                    "or digit), e.g. order.created",
                )
            ]
        )
    return event


def fire(
    catalog: Catalog,
    event: str,
    payload: Mapping[str, Any],
    start: Callable[[Pipeline, dict[str, Any]], str],
) -> FireOutcome:
    """Start the latest version of every pipeline subscribed to ``event`` with ``payload``."""
    outcome = FireOutcome(check_event(event))
    for name in catalog.subscribers(event):
        try:
            outcome.started[name] = start(catalog.get(name), dict(payload))
        except PipelineError as exc:  # its input schema refused the payload, or it went stale
            outcome.refused[name] = str(exc)
    return outcome
