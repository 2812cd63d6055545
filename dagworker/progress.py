"""Live progress of a run in the terminal (``dagworker run --wait``, ``status --watch``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dagworker.states import RunState
from dagworker.status import RunStatus, TaskHistory

STATE_COLOURS = {
    "done": "green",
    "compensated": "orange3",
    "retrying": "yellow",
    "pending": "grey50",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "filtered": "yellow",
    "skipped": "grey42",
    "cancelled": "magenta",
    "rolled_back": "orange3",
    "paused": "yellow",
    "rolling_back": "orange3",
    "rollback_failed": "red",
}


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def render_status(status: RunStatus) -> Group:
    colour = STATE_COLOURS.get(status.status, "white")
    elapsed = (status.finished_at or time.time()) - status.created_at
    head = Text.assemble(
        ("run ", "bold"),
        (status.run_id, "bold"),
        "  ",
        (status.pipeline, "italic"),
        f" v{status.pipeline_version}" if status.pipeline_version else "",
        "  ",
        (status.status, f"bold {colour}"),
        f"  {elapsed:.1f}s",
        f"  tasks {status.tasks_done}/{status.tasks_total}",
    )
    total = max(status.tasks_total, 1)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=total, completed=status.tasks_done, width=50),
        f"{100 * status.tasks_done // total}%",
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("node", "state", "tasks", "done", "failed", "started", "finished"):
        table.add_column(col, justify="right" if col in ("tasks", "done", "failed") else "left")
    for slug, node in status.nodes.items():
        table.add_row(
            slug,
            Text(node.state, style=STATE_COLOURS.get(node.state, "white")),
            str(node.tasks),
            str(node.completed),
            str(node.failed or ""),
            _when(node.started_at),
            _when(node.finished_at),
        )
    parts: list[Text | Table] = [head, bar, table]
    if status.error:
        parts.append(Text(f"error: {status.error}", style="red"))
    if any(node.history for node in status.nodes.values()):
        parts.append(_attempts_table(status))
    if status.events:
        parts.append(_transitions(status))
    if status.children:
        parts.append(Text("child runs: " + ", ".join(status.children), style="dim"))
    if status.parent:
        parts.append(Text(f"child of: {status.parent}", style="dim"))
    return Group(*parts)


def _attempts_table(status: RunStatus) -> Table:
    """Failed and retried tasks, one row per attempt (``dagworker status``)."""
    rows = [(slug, task) for slug, node in status.nodes.items() for task in node.history]
    return _attempt_rows("attempts of failed or retried tasks", rows)


def render_tasks(slug: str, tasks: list[TaskHistory]) -> Table:
    """Every task of one node with its attempts (``dagworker status RUN --node SLUG``)."""
    return _attempt_rows(f"tasks of node {slug}", [(slug, t) for t in tasks])


def _attempt_rows(title: str, rows: list[tuple[str, TaskHistory]]) -> Table:
    table = Table(title=title, title_justify="left", box=None)
    for col in ("node", "task", "attempt", "kind", "state", "worker", "started", "took", "error"):
        table.add_column(col, overflow="fold")
    for slug, task in rows:
        for a in task.attempts:
            took = (
                f"{a.finished_at - a.started_at:.2f}s"
                if a.started_at is not None and a.finished_at is not None
                else "-"
            )
            table.add_row(
                slug,
                str(task.task),
                str(a.attempt),
                a.kind,
                Text(a.state, style=STATE_COLOURS.get(a.state, "white")),
                a.worker or "-",
                _when(a.started_at),
                took,
                a.error or "",
            )
    return table


def _transitions(status: RunStatus) -> Text:
    steps = [f"{e.get('status')} {_when(e.get('at'))}" for e in status.events]
    return Text("transitions: " + " -> ".join(steps), style="dim")


def follow(
    read: object, console: Console, interval: float = 0.2, timeout: float | None = None
) -> RunStatus:
    """Redraw ``read()`` (a callable returning RunStatus) until the run is terminal."""
    assert callable(read)
    deadline = None if timeout is None else time.monotonic() + timeout
    status: RunStatus = read()
    with Live(
        render_status(status), console=console, refresh_per_second=10, transient=False
    ) as live:
        while not RunState(status.status).terminal:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
            status = read()
            live.update(render_status(status))
    if not console.is_terminal:
        console.print()  # rich's Live leaves the last line open when output is not a terminal
    return status
