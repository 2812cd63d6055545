"""Log lines that say which task they come from: ``run=... node=... task=... attempt=...``.

While a worker runs a task attempt, :func:`task_context` holds its ids in a context variable
and a log-record factory copies them onto every record created meanwhile, whatever the
logger (dagworker's own, ``ctx.logger``, a library the plugin calls):

- ``record.dagworker`` is `` run=R node=N task=I attempt=A`` (empty outside a task), which the
  worker's log format appends to each line;
- ``record.dagworker_run``, ``record.dagworker_node``, ``record.dagworker_task``,
  ``record.dagworker_attempt`` are the separate values, for a JSON formatter (None outside a
  task). Prefixed, because ``logging`` refuses an ``extra=`` key that a record already has.

A record factory rather than a filter, because a filter only sees records that reach the
handler it is attached to, and plugins are free to attach their own handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: The worker's log formats: Celery's defaults plus the task ids.
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s%(dagworker)s"
TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: "
    "%(message)s%(dagworker)s"
)

_current: ContextVar[tuple[str, str, int, int] | None] = ContextVar("dagworker_task", default=None)
_installed = False


@contextmanager
def task_context(run: str, node: str, task: int, attempt: int) -> Iterator[None]:
    """Tag every log record created inside the block with this task attempt's ids."""
    token = _current.set((run, node, task, attempt))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> tuple[str, str, int, int] | None:
    return _current.get()


def install() -> None:
    """Wrap the process's log-record factory (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ids = _current.get()
        if ids is None:
            record.dagworker = ""
            record.dagworker_run = record.dagworker_node = None
            record.dagworker_task = record.dagworker_attempt = None
        else:
            run, node, task, attempt = ids
            record.dagworker = f" run={run} node={node} task={task} attempt={attempt}"
            (
                record.dagworker_run,
                record.dagworker_node,
                record.dagworker_task,
                record.dagworker_attempt,
            ) = ids
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
