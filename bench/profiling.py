"""``--profile``: cProfile around every task execution in the dagworker workers (the probe
enables it), then the merged hotspots of the completion path, by own time and cumulative time.
"""

from __future__ import annotations

import io
import pstats

from bench.measure import Bench
from bench.shapes import chain_shape, diamonds_shape, fanout_shape

TOP = 30


def run(bench: Bench, quick: bool) -> None:
    shapes = [
        fanout_shape(2_000 if quick else 10_000),
        chain_shape(50 if quick else 200),
        diamonds_shape(50),
    ]
    for shape in shapes:
        sample = bench.measure("dag", shape, hop=False)
        print(f"  .. profiled {shape.name}: {sample.wall_s:.1f}s", flush=True)
    files = sorted(str(p) for p in bench.probe_dir.glob("*.prof"))
    stats = pstats.Stats(*files, stream=(out := io.StringIO()))
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        out.write(f"\n== completion path, top {TOP} by {order}\n")
        stats.sort_stats(order).print_stats(TOP)
    print(out.getvalue())
