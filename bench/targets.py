"""Issue 7's targets, judged on the figures the suites just measured (the bench's last table).

Pure logic: the suites hand over their unrounded figures, ``verdicts`` compares them with the
targets and says, per target, the figure, the limit and whether it is met. A target whose
suite did not run (``--only``) or that has no figure says so and is not counted as met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.report import fmt, table

#: the compared shapes, by kind, and dagworker's wall time / canvas's allowed for each (the
#: chain may be slower: every link is a hop)
WALL_LIMITS = {"chain": 1.2, "fanout": 1.0, "layers": 1.0, "diamonds": 1.0}
#: per-task cost across a scaling series: at most this ratio
FLAT_LIMIT = 1.3
#: the scaling series and the per-task columns held to it
SERIES = ("fan-out", "chains")
COLUMNS = ("wall", "commands", "worker cpu")
#: the node size that must complete (issue 3's 100,000-task node)
BIG_NODE = 100_000

MET, MISSED, NOT_RUN = "met", "MISSED", "not run"


@dataclass
class Figures:
    #: per compared shape kind: (shape name, wall ratio, dag cmd/t, canvas cmd/t)
    compare: dict[str, tuple[str, float, float, float]] = field(default_factory=dict)
    #: per scaling series, per column: the per-task cost at each size, smallest size first
    flat: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: tasks of the largest fan-out node that completed (0: the series did not run)
    big_node: int = 0


def verdicts(figures: Figures) -> list[list[str]]:
    rows: list[list[str]] = []
    for kind, limit in WALL_LIMITS.items():
        measured = figures.compare.get(kind)
        if measured is None:
            rows += [[f"wall time {kind}", "-", f"<= {fmt(limit)}x", NOT_RUN]]
            rows += [[f"commands/task {kind}", "-", "<= canvas", NOT_RUN]]
            continue
        name, wall, dag, canvas = measured
        rows.append(_judge(f"wall time {name}", wall, limit, f"{fmt(wall)}x", f"{fmt(limit)}x"))
        rows.append(_judge(f"commands/task {name}", dag, canvas, fmt(dag, 1), fmt(canvas, 1)))
    for series in SERIES:
        columns = figures.flat.get(series)
        for column in COLUMNS:
            values = (columns or {}).get(column, [])
            for how, ratio in (("largest/smallest run", _growth), ("max/min", _spread)):
                target = f"flat {series} {column}: {how}"
                if columns is None:
                    rows.append([target, "-", f"<= {fmt(FLAT_LIMIT)}", NOT_RUN])
                    continue
                value = ratio(values)
                rows.append(_judge(target, value, FLAT_LIMIT, fmt(value), fmt(FLAT_LIMIT)))
    target = f"a {BIG_NODE:,}-task node completes"
    if "fan-out" not in figures.flat:
        rows.append([target, "-", f"{BIG_NODE:,}", NOT_RUN])
    else:
        done = figures.big_node
        verdict = MET if done >= BIG_NODE else MISSED
        rows.append([target, f"{done:,} tasks", f"{BIG_NODE:,}", verdict])
    return rows


def _growth(values: Sequence[float]) -> float:
    """The largest run's per-task cost over the smallest run's (does it grow with the run?)."""
    if len(values) < 2 or not values[0] > 0:
        return math.nan
    return values[-1] / values[0]


def _spread(values: Sequence[float]) -> float:
    """The highest per-task cost of the series over the lowest, whatever their sizes."""
    if len(values) < 2 or not min(values) > 0:
        return math.nan
    return max(values) / min(values)


def _judge(target: str, value: float, limit: float, shown: str, limit_shown: str) -> list[str]:
    if math.isnan(value):
        return [target, "no figure", f"<= {limit_shown}", MISSED]
    return [target, shown, f"<= {limit_shown}", MET if value <= limit else MISSED]


def report(figures: Figures) -> str:
    rows = verdicts(figures)
    counts = {v: sum(r[-1] == v for r in rows) for v in (MET, MISSED, NOT_RUN)}
    title = f"issue 7 targets: {counts[MET]} met, {counts[MISSED]} missed" + (
        f", {counts[NOT_RUN]} not run" if counts[NOT_RUN] else ""
    )
    return table(title, ["target", "figure", "limit", "verdict"], rows)
