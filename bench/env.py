"""Names shared by the bench process and the worker subprocesses it starts.

Workers learn what they need from environment variables only (as production workers do), so
these names are the contract between ``bench.fleet`` and the worker-side modules.
"""

from __future__ import annotations

#: Redis URL (with the bench's DB) for the canvas app's broker and result backend.
CANVAS_REDIS_URL = "DWBENCH_CANVAS_REDIS_URL"
#: Key prefix of the whole bench; the canvas app puts its kombu and result keys under it.
PREFIX = "DWBENCH_PREFIX"
#: Directory where a dagworker worker's probe writes its completion-path figures on request.
PROBE_DIR = "DWBENCH_PROBE_DIR"
#: "1" to run cProfile around every task execution in a dagworker worker (--profile only).
PROFILE = "DWBENCH_PROFILE"

CANVAS_QUEUE = "canvas"


def canvas_prefix(prefix: str) -> str:
    return f"{prefix}:canvas"
