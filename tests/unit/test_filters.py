"""Edge filters: every operator, typed equality, paths, missing fields, selection (no services)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagworker.artifact import Artifact
from dagworker.filters import apply_edge_filter, check_edge_filter, matches_rule
from dagworker.pipeline import EdgeFilter, Rule, Select
from dagworker.values import typed_equal

DOC = {
    "name": "talk.mp4",
    "size": 900,
    "ratio": 1.0,
    "flag": True,
    "tags": ["a", 1, True],
    "meta": {"lang": "fr", "tracks": [{"codec": "h264"}]},
    "nothing": None,
}

CASES: list[tuple[str, str, Any, bool]] = [
    ("name", "eq", "talk.mp4", True),
    ("name", "eq", "TALK.mp4", False),
    ("size", "eq", 900.0, True),
    ("size", "eq", "900", False),
    ("flag", "eq", 1, False),
    ("flag", "eq", True, True),
    ("ratio", "eq", 1, True),
    ("tags", "eq", ["a", 1, True], True),
    ("tags", "eq", ["a", True, True], False),
    ("meta", "eq", {"lang": "fr", "tracks": [{"codec": "h264"}]}, True),
    ("name", "neq", "x", True),
    ("size", "neq", 900, False),
    ("flag", "neq", 1, True),
    ("meta.lang", "in", ["fr", "de"], True),
    ("meta.lang", "in", ["en"], False),
    ("flag", "in", [1], False),
    ("size", "in", [900.0], True),
    ("meta.lang", "not_in", ["en"], True),
    ("meta.lang", "not_in", ["fr"], False),
    ("name", "contains", ".mp", True),
    ("name", "contains", "avi", False),
    ("tags", "contains", 1, True),
    ("tags", "contains", "1", False),
    ("tags", "contains", True, True),
    ("size", "contains", 9, False),
    ("tags", "not_contains", "z", True),
    ("name", "not_contains", "talk", False),
    ("name", "starts_with", "talk", True),
    ("name", "starts_with", "mp4", False),
    ("name", "ends_with", ".mp4", True),
    ("size", "ends_with", "0", False),
    ("size", "gt", 899, True),
    ("size", "gt", 900, False),
    ("size", "gte", 900, True),
    ("size", "lt", 1000.5, True),
    ("size", "lte", 899, False),
    ("flag", "gt", 0, False),
    ("name", "gt", 0, False),
    ("nothing", "exists", None, True),
    ("missing", "exists", None, False),
    ("missing", "not_exists", None, True),
    ("name", "not_exists", None, False),
    ("name", r"matches", r"^\w+\.mp4$", True),
    ("name", "matches", "avi$", False),
    ("size", "matches", "9", False),
    ("meta.tracks.0.codec", "eq", "h264", True),
    ("meta.tracks.1.codec", "exists", None, False),
    ("meta.tracks.-1.codec", "eq", "h264", True),
    # a missing field: positives false, negatives (their exact negation) true
    ("missing", "eq", None, False),
    ("missing", "neq", "x", True),
    ("missing", "in", [None], False),
    ("missing", "not_in", ["x"], True),
    ("missing", "contains", "x", False),
    ("missing", "not_contains", "x", True),
    ("missing", "gt", 0, False),
    ("missing", "matches", ".*", False),
]


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"), CASES, ids=[f"{f}-{o}-{v!r}" for f, o, v, _ in CASES]
)
def test_operator(field: str, op: str, value: Any, expected: bool) -> None:
    assert matches_rule(Rule(field=field, op=op, value=value), DOC) is expected  # type: ignore[arg-type]


def arts(*fields: dict[str, Any]) -> list[Artifact]:
    return [Artifact(f"src:{i}:0", "src", f"src:{i}:0", f) for i, f in enumerate(fields)]


def test_rules_are_anded() -> None:
    items = arts({"t": "v", "s": 1}, {"t": "v", "s": 5}, {"t": "s", "s": 9})
    edge = EdgeFilter(
        rules=[Rule(field="t", op="eq", value="v"), Rule(field="s", op="gt", value=2)]
    )
    assert [a.fields["s"] for a in apply_edge_filter(edge, items)] == [5]


def test_select_desc_with_ties_by_id_and_missing_last() -> None:
    items = [
        Artifact(f"src:{i}:0", "src", None, f)
        for i, f in enumerate([{"s": 1}, {"s": 7}, {}, {"s": 7}, {"s": "9"}, {"s": 3}])
    ]
    edge = EdgeFilter(select=Select(field="s", order="desc", limit=4))
    assert [a.id for a in apply_edge_filter(edge, items)] == [
        "src:1:0",
        "src:3:0",
        "src:5:0",
        "src:0:0",
    ]
    asc = EdgeFilter(select=Select(field="s", order="asc", limit=10))
    assert [a.id for a in apply_edge_filter(asc, items)][-2:] == ["src:2:0", "src:4:0"]


def test_select_ties_use_numeric_id_order() -> None:
    items = [Artifact(f"src:{i}:0", "src", None, {"s": 1}) for i in (10, 2)]
    edge = EdgeFilter(select=Select(field="s", limit=1))
    assert apply_edge_filter(edge, items)[0].id == "src:2:0"


def test_no_filter_keeps_everything_in_order() -> None:
    items = arts({"a": 1}, {"a": 2})
    assert apply_edge_filter(None, items) == items


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule(field="x", op="in", value="abc"), "must be a list"),
        (Rule(field="x", op="gt", value="3"), "must be a number"),
        (Rule(field="x", op="exists", value=1), "takes no value"),
        (Rule(field="x", op="matches", value="(unclosed"), "invalid regular expression"),
        (Rule(field="x", op="starts_with", value=3), "must be a string"),
    ],
)
def test_static_problems(rule: Rule, message: str) -> None:
    problems = check_edge_filter(EdgeFilter(rules=[rule]))
    assert len(problems) == 1 and message in problems[0]


def test_valid_filter_has_no_problems() -> None:
    assert check_edge_filter(EdgeFilter(rules=[Rule(field="x", op="matches", value="^a+$")])) == []


def test_redos_pattern_is_linear_time() -> None:
    rule = Rule(field="s", op="matches", value="(a+)+b")
    assert matches_rule(rule, {"s": "a" * 50_000}) is False


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-10, 10)
    | st.floats(allow_nan=False, allow_infinity=False, width=16)
    | st.text(max_size=3)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(json_values, json_values)
def test_eq_and_neq_are_complements(a: Any, b: Any) -> None:
    eq = matches_rule(Rule(field="v", op="eq", value=b), {"v": a})
    neq = matches_rule(Rule(field="v", op="neq", value=b), {"v": a})
    assert eq is not neq
    assert eq is typed_equal(b, a)  # symmetric


@given(
    st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False),
)
def test_numbers_compare_as_numbers(a: float, b: float) -> None:
    assert matches_rule(Rule(field="v", op="eq", value=b), {"v": a}) is (a == b)


@given(json_values, json_values)
def test_in_singleton_iff_eq(a: Any, b: Any) -> None:
    assert matches_rule(Rule(field="v", op="in", value=[b]), {"v": a}) is typed_equal(a, b)
