"""What the model plugin (``t_model``) emits, as a pure function of its node and inputs.

Shared by the plugin the workers run and by the reference, so the reference can predict every
artifact's fields. Each artifact carries a ``key`` hashed from its node, its task's input keys
(dependency order, then emission order) and its emission index: two artifacts have equal fields
only when they descend from the same inputs, so comparing by content compares lineage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

WORDS = ("abc", "bca", "cab", "ab", "ba", "zzz", "a1", "b2c")


def outputs(node: str, input_keys: Sequence[str], count: int) -> list[dict[str, Any]]:
    out = []
    for j in range(count):
        key = hashlib.sha1(f"{node}|{','.join(input_keys)}|{j}".encode()).hexdigest()[:12]
        v = int(key[:4], 16) % 10
        out.append(
            {
                "key": key,
                "n": node,
                "j": j,
                "v": v,
                "w": WORDS[int(key[4:6], 16) % len(WORDS)],
                "b": v % 2 == 0,
                "m": {"p": v % 3},
            }
        )
    return out


def should_fail(mode: int, inputs: Sequence[dict[str, Any]]) -> bool:
    """``fail`` config: 0 never, 1 always, 2 when the inputs' ``v`` add up to an odd number."""
    if mode == 1:
        return True
    return mode == 2 and sum(int(a.get("v", 0)) for a in inputs) % 2 == 1
