"""Fault injection for crash tests and the chaos suite: SIGKILL this process at a named point.

``DAGWORKER_FAULTS=point:node[,point:node...]`` (unset in production; read once per process).
Points: ``in_plugin`` (while the plugin runs), ``after_finish`` (outcome recorded, orchestration
not yet done), ``before_publish`` (tasks persisted, messages not yet sent), ``before_comp_publish``
(compensations marked, messages not yet sent). The node may be
``*``. A SIGKILL gives the process no chance to clean up, exactly like a machine dying.
"""

from __future__ import annotations

import os
import signal
from functools import cache


@cache
def _armed() -> frozenset[tuple[str, str]]:
    spec = os.environ.get("DAGWORKER_FAULTS", "")
    pairs = (item.split(":", 1) for item in spec.split(",") if ":" in item)
    return frozenset((point.strip(), node.strip()) for point, node in pairs)


def crash_point(point: str, node: str) -> None:
    armed = _armed()
    if armed and ((point, node) in armed or (point, "*") in armed):
        os.kill(os.getpid(), signal.SIGKILL)
