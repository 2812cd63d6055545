"""Edge filters (DESIGN §4.4): rules on an artifact's fields, ANDed, then an optional top-N.

Semantics:
- ``field`` is a dotted path into the artifact's fields (list indexes allowed: ``files.0.name``).
- Equality is typed JSON equality (``values.typed_equal``): ``true != 1``, ``"1" != 1``,
  ``1 == 1.0``. Ordering (``gt gte lt lte``) compares numbers only; anything else never matches.
- A missing field makes every positive operator false. The negative operators (``neq``,
  ``not_in``, ``not_contains``, ``not_exists``) are exact negations of their positive twin, so
  they are true for a missing field. ``exists`` is true for a present ``null``.
- ``matches`` is an RE2 search (linear time: a hostile pattern cannot hang a worker) on strings.
- ``select`` orders by the field (numbers only; artifacts without a number sort last, in id
  order), ``desc`` by default, ties broken by artifact id, and keeps ``limit``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import re2

from dagworker.artifact import Artifact
from dagworker.pipeline import EdgeFilter, Rule
from dagworker.values import MISSING, compare, get_path, is_number, typed_equal, typed_in


@lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> Any:
    return re2.compile(pattern)


def _contains(value: Any, needle: Any) -> bool:
    if isinstance(value, str):
        return isinstance(needle, str) and needle in value
    if isinstance(value, list):
        return typed_in(needle, value)
    return False


def _order(op: str) -> Callable[[Any, Any], bool]:
    wanted = {"gt": (1,), "gte": (0, 1), "lt": (-1,), "lte": (-1, 0)}[op]

    def check(value: Any, bound: Any) -> bool:
        result = compare(value, bound)
        return result is not None and result in wanted

    return check


def _matches(value: Any, pattern: Any) -> bool:
    return isinstance(value, str) and compile_regex(pattern).search(value) is not None


_POSITIVE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": typed_equal,
    "in": lambda value, options: typed_in(value, options) if isinstance(options, list) else False,
    "contains": _contains,
    "starts_with": lambda v, p: isinstance(v, str) and isinstance(p, str) and v.startswith(p),
    "ends_with": lambda v, p: isinstance(v, str) and isinstance(p, str) and v.endswith(p),
    "gt": _order("gt"),
    "gte": _order("gte"),
    "lt": _order("lt"),
    "lte": _order("lte"),
    "exists": lambda value, _: True,
    "matches": _matches,
}
_NEGATIVE = {"neq": "eq", "not_in": "in", "not_contains": "contains", "not_exists": "exists"}


def matches_rule(rule: Rule, fields: dict[str, Any]) -> bool:
    value = get_path(fields, rule.field)
    positive = _NEGATIVE.get(rule.op, rule.op)
    result = value is not MISSING and _POSITIVE[positive](value, rule.value)
    return not result if rule.op in _NEGATIVE else result


def _select_key(field: str, descending: bool) -> Callable[[Artifact], tuple[Any, ...]]:
    def key(artifact: Artifact) -> tuple[Any, ...]:
        value = get_path(artifact.fields, field)
        if value is MISSING or not is_number(value):
            return (1, 0, artifact.sort_key())
        return (0, -value if descending else value, artifact.sort_key())

    return key


def apply_edge_filter(edge: EdgeFilter | None, artifacts: Sequence[Artifact]) -> list[Artifact]:
    if edge is None or (not edge.rules and edge.select is None):
        return list(artifacts)
    kept = [a for a in artifacts if all(matches_rule(r, a.fields) for r in edge.rules)]
    if edge.select is not None:
        sel = edge.select
        kept = sorted(kept, key=_select_key(sel.field, sel.order == "desc"))[: sel.limit]
    return kept


def check_edge_filter(edge: EdgeFilter) -> list[str]:
    """Problems knowable before any task is sent (validation reports them)."""
    problems = []
    for i, rule in enumerate(edge.rules):
        where = f"rules[{i}] ({rule.field} {rule.op})"
        if rule.op in ("in", "not_in") and not isinstance(rule.value, list):
            problems.append(f"{where}: value must be a list")
        elif rule.op in ("gt", "gte", "lt", "lte") and not is_number(rule.value):
            problems.append(f"{where}: value must be a number (ordering compares numbers only)")
        elif rule.op in ("exists", "not_exists") and rule.value is not None:
            problems.append(f"{where}: takes no value")
        elif rule.op in ("starts_with", "ends_with", "matches") and not isinstance(rule.value, str):
            problems.append(f"{where}: value must be a string")
        elif rule.op == "matches":
            try:
                compile_regex(rule.value)
            except Exception as exc:  # re2.error, not exported under one name
                problems.append(f"{where}: invalid regular expression: {exc}")
    return problems
