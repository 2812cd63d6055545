"""Summarise py-spy ``--format raw`` profiles of workers: ``python -m bench.spy FILE...``.

py-spy samples only threads that are running (not waiting on a socket) unless ``--idle`` is
given, so these are CPU hotspots, unlike cProfile's wall-clock view in ``--profile``. Prints the
functions with the most samples on top of the stack (self) and anywhere on it (inclusive).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

TOP = 40
#: "function (path/to/file.py:123)" -> "function (file.py)": lines would split one function.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^:()]*)(?::\d+)?\)$")


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({Path(match['path']).name})"


def summarise(paths: list[str]) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in Path(path).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [_name(f) for f in stack.split(";") if f.strip()]
            n = int(count)
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    out = [f"{total} samples from {len(paths)} file(s)"]
    # The worker's event loop and Celery's start-up frames are on (nearly) every stack.
    inclusive = Counter({k: v for k, v in inclusive.items() if v < 0.9 * total})
    for title, counter in (("self", own), ("inclusive (frames on < 90% of stacks)", inclusive)):
        out.append(f"\n== top {TOP} by {title} samples")
        out += [f"{n / total:6.1%}  {name}" for name, n in counter.most_common(TOP)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1:]))
