"""The bench's suites: engine comparison (issue 7), scaling, and the 100,000-task node
(issue 3's figures). Each prints its table as soon as it has it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bench.measure import Bench, Sample
from bench.report import fmt, mean, median, percentile, table
from bench.shapes import Shape, chain_shape, diamonds_shape, fanout_shape, layers_shape
from bench.targets import Figures

COMPARE = ("chain", "fanout", "layers", "diamonds")
SUITES = (*COMPARE, "scale-fanout", "scale-chain")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    compare: dict[str, Shape]
    scale_fanout: tuple[int, ...]
    scale_chain: tuple[int, ...]


def sizes(quick: bool) -> Sizes:
    if quick:
        return Sizes(
            1,
            {
                "chain": chain_shape(50),
                "fanout": fanout_shape(200),
                "layers": layers_shape(5, 5),
                "diamonds": diamonds_shape(10),
            },
            (100, 1_000, 5_000),
            (20, 50, 100),
        )
    return Sizes(
        3,
        {
            "chain": chain_shape(200),
            "fanout": fanout_shape(1_000),
            "layers": layers_shape(20, 20),
            "diamonds": diamonds_shape(50),
        },
        (100, 1_000, 10_000, 100_000),
        (50, 200, 800),
    )


# -- comparison ---------------------------------------------------------------------------------


def compare(bench: Bench, shapes: list[Shape], rounds: int, figures: Figures) -> None:
    """A B A B ...: a warm-up pair first, then ``rounds`` pairs; ratios are taken per pair so a
    machine that slows down mid-bench (other engineers' tests) hits both sides of a ratio."""
    rows, commands, wire = [], [], []
    for shape in shapes:
        bench.measure("dag", shape), bench.measure("canvas", shape)  # warm-up: caches, imports
        pairs = [
            (bench.measure("dag", shape), bench.measure("canvas", shape)) for _ in range(rounds)
        ]
        dag = [d for d, _ in pairs]
        canvas = [c for _, c in pairs]
        hops = [h * 1e3 for d in dag for h in d.hops_s]
        rows.append(
            [
                shape.name,
                f"{dag[0].tasks:,}",
                fmt(median([d.wall_s for d in dag]), 3),
                fmt(median([c.wall_s for c in canvas]), 3),
                fmt(median([d.wall_s / c.wall_s for d, c in pairs])),
                fmt(median([d.per_task(d.commands) for d in dag]), 1),
                fmt(median([c.per_task(c.commands) for c in canvas]), 1),
                fmt(median([d.per_task(d.worker_cpu_s) * 1e3 for d in dag])),
                fmt(median([c.per_task(c.worker_cpu_s) * 1e3 for c in canvas])),
                fmt(median([d.per_task(d.redis_cpu_s) * 1e3 for d in dag]), 3),
                fmt(median([c.per_task(c.redis_cpu_s) * 1e3 for c in canvas]), 3),
                fmt(percentile(hops, 50), 1),
                fmt(percentile(hops, 99), 1),
            ]
        )
        figures.compare[shape.name.split("-", 1)[0]] = (
            shape.name,
            median([d.wall_s / c.wall_s for d, c in pairs]),
            median([d.per_task(d.commands) for d in dag]),
            median([c.per_task(c.commands) for c in canvas]),
        )
        commands += [_top_commands(dag), _top_commands(canvas)]
        wire.append(
            [
                shape.name,
                *(
                    fmt(median([s.per_task(getattr(s, side)) for s in samples]), 0)
                    for side in ("net_in", "net_out")
                    for samples in (dag, canvas)
                ),
            ]
        )
        print(f"  .. {shape.name}: {rounds} pairs done", flush=True)
    print(
        table(
            f"dagworker vs canvas, median of {rounds} A/B pairs (per task: divided by task count)",
            [
                "shape",
                "tasks",
                "dag s",
                "canvas s",
                "dag/canvas",
                "cmd/t dag",
                "cmd/t cv",
                "cpu ms/t dag",
                "cpu ms/t cv",
                "redis ms/t dag",
                "redis ms/t cv",
                "hop p50 ms",
                "hop p99 ms",
            ],
            rows,
        )
    )
    print(
        table(
            "Redis commands per task by command (server side, median run)",
            ["engine/shape", "top commands"],
            commands,
            left=2,
        )
    )
    print(
        table(
            "Redis network bytes per task (INFO stats: messages, script arguments, replies)",
            ["shape", "in B/t dag", "in B/t cv", "out B/t dag", "out B/t cv"],
            wire,
        )
    )


def _top_commands(samples: list[Sample], top: int = 7) -> list[str]:
    sample = sorted(samples, key=lambda s: s.commands)[len(samples) // 2]
    counts = Counter(sample.by_command).most_common(top)
    text = " ".join(f"{name}={n / sample.tasks:.1f}" for name, n in counts)
    return [f"{sample.engine} {sample.shape}", text]


# -- scaling --------------------------------------------------------------------------------------


def _completion(sample: Sample, slug: str) -> tuple[list[float], list[float]]:
    costs = sample.executions.get(slug, [])
    return [float(c) for c, _ in costs], [float(u) for _, u in costs]


#: Scaling runs of at most this many tasks are repeated (``repeats``) and their per-task
#: costs are the median: a 100-task run lasts about 0.1 s, and one slow moment of the machine
#: moves a single run's figure by a third. Larger runs are long enough to be measured once.
REPEAT_UP_TO = 20_000


#: How often the scaling runs look whether their run ended. The comparison polls every 10 ms,
#: dagworker and canvas alike (canvas's poll reads every leaf's result); a 100-task run lasts
#: about 0.1 s, so there its end is seen 5 ms late on average, 5% of its per-task cost. One
#: ZCARD per millisecond costs the server next to nothing and its commands are not counted.
SCALING_POLL_S = 0.001


def _series(bench: Bench, shapes: list[Shape], repeats: int, **kwargs: bool) -> list[list[Sample]]:
    """The runs of each shape, the median-wall run first. Shapes of at most REPEAT_UP_TO tasks
    run ``repeats`` times, interleaved (small, medium, small, medium, ...) like the comparison's
    A B A B: the machine's speed drifts by more than the target's margin over minutes, and
    runs of one size back to back would each see a different part of that drift. Larger
    shapes run once, after the first round, so the rounds of the small ones surround them."""
    small = [s for s in shapes if s.tasks <= REPEAT_UP_TO]
    large = [s for s in shapes if s.tasks > REPEAT_UP_TO]
    runs: dict[str, list[Sample]] = {s.name: [] for s in shapes}
    poll, bench.poll_s = bench.poll_s, SCALING_POLL_S
    try:
        for round_ in range(max(1, repeats)):
            for shape in small:
                runs[shape.name].append(bench.measure("dag", shape, **kwargs))
            if round_ == 0:
                for shape in large:
                    runs[shape.name].append(bench.measure("dag", shape, **kwargs))
    finally:
        bench.poll_s = poll
    out = []
    for shape in shapes:
        of = runs[shape.name]
        middle = sorted(of, key=lambda s: s.wall_s)[len(of) // 2]
        out.append([middle, *(s for s in of if s is not middle)])
    return out


def _median_per_task(runs: list[Sample]) -> dict[str, float]:
    """The per-task costs of repeated runs of one shape: the median of each, unrounded."""
    return {
        "wall": median([s.per_task(s.wall_s) for s in runs]),
        "commands": median([s.per_task(s.commands) for s in runs]),
        "worker cpu": median([s.per_task(s.worker_cpu_s) for s in runs]),
    }


def _flat(series: list[dict[str, float]]) -> dict[str, list[float]]:
    """The per-task costs held to the flatness target, smallest run first."""
    return {column: [point[column] for point in series] for column in series[0]}


def scale_fanout(
    bench: Bench, widths: tuple[int, ...], figures: Figures, repeats: int = 1
) -> list[Sample]:
    """One fan-out node per width; returns the median-wall run of each width."""
    samples = []
    series = []
    rows = []
    shapes = [fanout_shape(width, aggregate=False) for width in widths]
    measured = _series(bench, shapes, repeats, memory=True, hop=False)
    for width, runs in zip(widths, measured, strict=True):
        sample = runs[0]
        samples.append(sample)
        cost = _median_per_task(runs)
        series.append(cost)
        cmds, cpu = _completion(sample, "each")
        launch = sample.launches.get("each", [[0, 0]])[0]
        rows.append(
            [
                f"{width:,}",
                str(len(runs)),
                fmt(sample.wall_s, 2),
                fmt(cost["wall"] * 1e3, 3),
                fmt(cost["commands"], 1),
                fmt(cost["worker cpu"] * 1e3, 3),
                fmt(percentile(cmds, 50), 0),
                fmt(mean(cmds), 2),
                fmt(percentile(cpu, 50) / 1e3, 3),
                fmt(mean(cpu) / 1e3, 3),
                fmt(launch[0] / width, 3),
                fmt(launch[1] / width / 1e3, 3),
            ]
        )
        print(f"  .. fan-out {width:,}: {sample.wall_s:.1f}s x {len(runs)}", flush=True)
    headers = [
        "tasks",
        "runs",
        "wall s",
        "wall ms/t",
        "cmd/t",
        "cpu ms/t",
        "compl cmd p50",
        "compl cmd mean",
        "compl cpu ms p50",
        "compl cpu ms mean",
        "launch cmd/t",
        "launch cpu ms/t",
    ]
    rows.append(_ratio_row(rows, headers))
    figures.flat["fan-out"] = _flat(series)
    # (measure() raises unless every run completed: the largest node's size completed)
    figures.big_node = max(widths)
    print(
        table("scaling: one fan-out node (src emits N -> N single tasks), dagworker", headers, rows)
    )
    return samples


def scale_chain(bench: Bench, lengths: tuple[int, ...], figures: Figures, repeats: int = 1) -> None:
    rows = []
    series = []
    shapes = [chain_shape(length) for length in lengths]
    for length, runs in zip(lengths, _series(bench, shapes, repeats), strict=True):
        sample = runs[0]
        cost = _median_per_task(runs)
        series.append(cost)
        hops = [h * 1e3 for h in sample.hops_s]
        # Every completion of a chain launches the next link: all of them are alike.
        costs = [c for per_node in sample.executions.values() for c in per_node]
        cmds, cpu = [float(c) for c, _ in costs], [float(u) for _, u in costs]
        rows.append(
            [
                f"{length:,}",
                str(len(runs)),
                fmt(sample.wall_s, 2),
                fmt(cost["wall"] * 1e3, 3),
                fmt(cost["commands"], 1),
                fmt(cost["worker cpu"] * 1e3, 3),
                fmt(mean(cmds), 1),
                fmt(mean(cpu) / 1e3, 3),
                fmt(percentile(hops, 50), 1),
                fmt(percentile(hops, 99), 1),
            ]
        )
        print(f"  .. chain {length}: {sample.wall_s:.1f}s x {len(runs)}", flush=True)
    headers = [
        "length",
        "runs",
        "wall s",
        "wall ms/t",
        "cmd/t",
        "cpu ms/t",
        "compl cmd mean",
        "compl cpu ms mean",
        "hop p50 ms",
        "hop p99 ms",
    ]
    rows.append(_ratio_row(rows, headers))
    figures.flat["chains"] = _flat(series)
    print(table("scaling: chains, dagworker", headers, rows))


def _ratio_row(rows: list[list[str]], headers: list[str]) -> list[str]:
    """The largest run's figure over the smallest run's, for every column (1.00 = per-task
    cost independent of size; the targets table also judges the highest over the lowest)."""
    out = ["largest/smallest"]
    for i in range(1, len(headers)):
        if headers[i] in ("wall s", "runs"):  # totals, not per-task costs: no ratio
            out.append("-")
            continue
        try:
            first, last = (float(r[i].replace(",", "")) for r in (rows[0], rows[-1]))
            out.append(fmt(last / first) if first else "-")
        except ValueError:
            out.append("-")
    return out


# -- issue 3 -------------------------------------------------------------------------------------


def big_node(samples: list[Sample]) -> None:
    """Issue 3: the largest node's totals, memory, and completion cost against the smallest."""
    small, big = samples[0], samples[-1]
    mb = 1024 * 1024
    rows = [
        ["tasks", f"{big.tasks - 1:,}"],
        ["total time s", fmt(big.wall_s, 1)],
        ["throughput tasks/s", fmt(big.tasks / big.wall_s, 0)],
        ["Redis used_memory before MB", fmt(big.memory_before / mb, 1)],
        ["Redis used_memory peak MB", fmt(big.memory_peak / mb, 1)],
        ["Redis used_memory after MB (run kept)", fmt(big.memory_after / mb, 1)],
        [
            "Redis bytes per finished task (after-before)",
            fmt((big.memory_after - big.memory_before) / big.tasks, 0),
        ],
        [
            "Redis bytes per task at peak (peak-before)",
            fmt((big.memory_peak - big.memory_before) / big.tasks, 0),
        ],
    ]
    print(table(f"the {big.tasks - 1:,}-task node (dagworker)", ["figure", "value"], rows))
    rows = []
    for sample in (small, big):
        cmds, cpu = _completion(sample, "each")
        rows.append(
            [
                f"{sample.tasks - 1:,}",
                fmt(percentile(cmds, 50), 0),
                fmt(mean(cmds), 2),
                fmt(max(cmds), 0),
                fmt(percentile(cpu, 50) / 1e3, 3),
                fmt(percentile(cpu, 99) / 1e3, 3),
                fmt(mean(cpu) / 1e3, 3),
                fmt(sample.per_task(sample.commands), 1),
            ]
        )
    print(
        table(
            "issue 3: orchestration cost per completion (worker-side probe around "
            "Orchestrator.execute: begin_task, plugin, finish_task, advance)",
            [
                "node tasks",
                "round trips p50",
                "round trips mean",
                "round trips max",
                "cpu ms p50",
                "cpu ms p99",
                "cpu ms mean",
                "server cmds/task (all)",
            ],
            rows,
        )
    )
