"""JSON values as filters and expressions see them: typed equality, ordering, dotted paths.

Equality is JSON equality with types kept apart: ``true != 1``, ``"1" != 1``, ``1 == 1.0``.
Ordering compares numbers only (booleans are not numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MISSING: Any = object()


def is_number(value: Any) -> bool:
    """True for JSON numbers (int or float) but not for booleans."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def typed_equal(a: Any, b: Any) -> bool:
    """JSON equality keeping types apart (bool vs number vs string), recursing into containers."""
    if is_number(a) and is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(typed_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def typed_in(item: Any, container: Any) -> bool:
    """Membership with typed equality: ``1 in [true]`` is false."""
    if isinstance(container, list):
        return any(typed_equal(item, x) for x in container)
    if isinstance(container, str) and isinstance(item, str):
        return item in container
    if isinstance(container, dict) and isinstance(item, str):
        return item in container
    return False


def compare(a: Any, b: Any) -> int | None:
    """-1/0/1 when both are numbers, else None (ordering is defined on numbers only)."""
    if not (is_number(a) and is_number(b)):
        return None
    return int(a > b) - int(a < b)


def get_path(obj: Any, path: str, default: Any = MISSING) -> Any:
    """Follow a dotted path (``a.b.0.c``) through objects and lists; ``default`` when absent."""
    current = obj
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return default
            current = current[index]
        else:
            return default
    return current
