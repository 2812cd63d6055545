"""Issue 7's targets, judged on the figures the suites just printed (the last table).

Pure logic: the suites hand over their figures, ``verdicts`` compares them with the targets and
says, per target and shape, the figure, the limit and whether it is met.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.report import fmt, table

#: dagworker's wall time / canvas's, at most (the chain may be slower: every link is a hop).
WALL_LIMIT = {"chain": 1.2}
WALL_LIMIT_DEFAULT = 1.0
#: largest / smallest per-task cost across a scaling series, at most
FLAT_LIMIT = 1.3
#: the node size that must complete (issue 3's 100,000-task node)
BIG_NODE = 100_000


@dataclass
class Figures:
    #: per compared shape (its kind: chain, fanout ...): (wall ratio, dag cmd/t, canvas cmd/t)
    compare: dict[str, tuple[str, float, float, float]] = field(default_factory=dict)
    #: per scaling series: {column: largest/smallest}
    flat: dict[str, dict[str, float]] = field(default_factory=dict)
    #: tasks of the largest fan-out node that completed (0: the series did not run)
    big_node: int = 0


def verdicts(figures: Figures) -> list[list[str]]:
    rows: list[list[str]] = []
    for kind, (name, wall, dag, canvas) in figures.compare.items():
        limit = WALL_LIMIT.get(kind, WALL_LIMIT_DEFAULT)
        rows.append(_row(f"wall time {name}", f"{fmt(wall)}x", f"<= {fmt(limit)}x", wall <= limit))
        rows.append(
            _row(f"commands/task {name}", fmt(dag, 1), f"<= {fmt(canvas, 1)}", dag <= canvas)
        )
    for series, values in figures.flat.items():
        for column, ratio in values.items():
            ok = ratio <= FLAT_LIMIT
            rows.append(_row(f"flat {series}: {column}", fmt(ratio), f"<= {fmt(FLAT_LIMIT)}", ok))
    if figures.flat.get("fan-out") is not None:
        done = figures.big_node
        rows.append(
            _row(
                f"a {BIG_NODE:,}-task node completes",
                f"{done:,} tasks",
                f"{BIG_NODE:,}",
                done >= BIG_NODE,
            )
        )
    return rows


def _row(target: str, figure: str, limit: str, met: bool) -> list[str]:
    return [target, figure, limit, "met" if met else "MISSED"]


def report(figures: Figures) -> str:
    rows = verdicts(figures)
    missed = sum(r[-1] != "met" for r in rows)
    title = f"issue 7 targets: {len(rows) - missed} met, {missed} missed"
    return table(title, ["target", "figure", "limit", "verdict"], rows)


def ratios(
    headers: Sequence[str], ratio_row: Sequence[str], columns: Mapping[str, str]
) -> dict[str, float]:
    """The ``largest/smallest`` row's values of the given columns, by their short names."""
    out = {}
    for header, name in columns.items():
        value = ratio_row[list(headers).index(header)]
        if value != "-":
            out[name] = float(value)
    return out
