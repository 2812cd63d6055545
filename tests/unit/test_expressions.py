"""The binding expression language (DESIGN §4.4), no services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagworker.errors import ExpressionEvalError, ExpressionSyntaxError
from dagworker.expressions import MAX_TEMPLATE_CHARS, PIPES, is_truthy, parse_template
from dagworker.values import typed_equal

SCOPE: dict[str, Any] = {
    "input": {
        "name": "Big File",
        "n": "42",
        "x": 7,
        "f": 2.5,
        "path": "/data/in/clip.tar.gz",
        "url": "https://cdn.example/a/b/movie.mp4?sig=1",
        "csv": "a,b,,c",
        "empty": "",
        "nested": [[1, 2], [3], 4],
        "mixed": ["a", None, "", "b"],
        "flag": False,
        "blob": '{"a": {"b": [10, 20]}}',
        "space": "  pad  ",
        "enc": "a%20b%2Fc",
    },
    "config": {"quality": "high"},
    "run": {"id": "r1", "pipeline": "media"},
    "task": {"index": 3},
    "fetch": [{"title": "hello world", "existing_id": None, "size": 10}],
    "many": [{"x": 1}, {"x": 2}, {"y": 3}],
    "none": [],
}

CASES: list[tuple[str, Any]] = [
    # typed single expressions and text templates
    ("{input.x}", 7),
    ("{input.f}", 2.5),
    ("{input.flag}", False),
    ("{input.nested}", [[1, 2], [3], 4]),
    ("n={input.x}", "n=7"),
    ("{input.x}{input.x}", "77"),
    ("{{literal}}", "{literal}"),
    ("{input.mixed} ", '["a",null,"","b"] '),
    ("{input.missing}", None),
    ("[{input.missing}]", "[]"),
    ("{'quoted' | upper}", "QUOTED"),
    ("{12}", 12),
    ("{-1.5}", -1.5),
    ("{null}", None),
    # namespaces
    ("{config.quality}", "high"),
    ("{run.id}/{run.pipeline}", "r1/media"),
    ("{task.index}", 3),
    ("{fetch.title}", "hello world"),
    ("{many.x}", [1, 2]),
    ("{none.x}", None),
    ("{fetch.existing_id | not}", True),
    ("{many.y}", [3]),
    # string pipes
    ("{input.name | upper}", "BIG FILE"),
    ("{input.name | lower}", "big file"),
    ("{input.space | trim}", "pad"),
    ("{fetch.title | title}", "Hello World"),
    ("{input.space | strip}", "pad"),
    ("{input.name | strip(Bel)}", "ig Fi"),
    ("{input.name | replace(Big, Small)}", "Small File"),
    ("{input.name | truncate(3)}", "Big"),
    ("{input.name | prepend('>> ')}", ">> Big File"),
    ("{input.name | append('!')}", "Big File!"),
    ("{input.x | pad(4, 0)}", "0007"),
    ("{input.x | pad(3)}", "  7"),
    ("{input.x | string}", "7"),
    ("{input.nested | string}", "[[1,2],[3],4]"),
    # defaults and missing values
    ("{input.missing | default(mp4)}", "mp4"),
    ("{input.empty | default(x)}", "x"),
    ("{input.missing | upper | default(none)}", "none"),
    ("{input.x | default(1)}", 7),
    ("{input.missing | default($config.quality)}", "high"),
    ("{input.missing | length}", 0),
    ("{input.missing | not}", True),
    ("{input.x | required}", 7),
    # lists
    ("{input.nested | first}", [1, 2]),
    ("{input.nested | last}", 4),
    ("{input.nested | nth(1)}", [3]),
    ("{input.nested | flatten}", [1, 2, 3, 4]),
    ("{input.mixed | compact}", ["a", "b"]),
    ("{input.csv | split(,)}", ["a", "b", "", "c"]),
    ("{input.name | split}", ["Big", "File"]),
    ("{input.csv | split(,) | compact | join(-)}", "a-b-c"),
    ("{input.mixed | compact | join(,)}", "a,b"),
    ("{input.mixed | compact | join}", "ab"),
    ("{input.mixed | compact | join(, )}", "a,b"),
    ("{input.mixed | compact | join(', ')}", "a, b"),
    ("{input.mixed | compact | upper}", ["A", "B"]),
    ("{list(input.x, config.quality, input.missing)}", [7, "high", None]),
    ("{list(input.name | lower, 'k') | join(/)}", "big file/k"),
    ("{input.nested | length}", 3),
    ("{input.name | length}", 8),
    ("{many.x | first}", 1),
    # paths and URLs
    ("{input.path | basename}", "clip.tar.gz"),
    ("{input.path | dirname}", "/data/in"),
    ("{input.path | stem}", "clip.tar"),
    ("{input.path | ext}", "gz"),
    ("{input.url | basename}", "movie.mp4"),
    ("{input.url | ext}", "mp4"),
    ("{input.name | urlencode}", "Big%20File"),
    ("{input.enc | urldecode}", "a b/c"),
    # numbers
    ("{input.n | int}", 42),
    ("{input.n | float}", 42.0),
    ("{input.f | int}", 2),
    ("{'-2.9' | int}", -2),
    ("{'3.0' | int}", 3),
    # json_get, match
    ("{input.blob | json_get(a.b.1)}", 20),
    ("{input.blob | json_get(a.z) | default(0)}", 0),
    ("{input.name | match('^Big')}", True),
    ("{input.name | match(\\d+)}", False),
    # comparisons: typed equality, numbers-only ordering
    ("{input.x | eq(7)}", True),
    ("{input.x | eq(7.0)}", True),
    ("{input.n | eq(42)}", False),
    ("{input.flag | eq(0)}", False),
    ("{input.flag | neq(0)}", True),
    ("{input.x | gt(6)}", True),
    ("{input.x | gte(7)}", True),
    ("{input.x | lt(7)}", False),
    ("{input.x | lte(7.5)}", True),
    ("{config.quality | in(low, high)}", True),
    ("{input.x | in('7')}", False),
    ("{input.x | in(7)}", True),
    ("{input.flag | not}", True),
]


@pytest.mark.parametrize(("template", "expected"), CASES, ids=[c[0] for c in CASES])
def test_render(template: str, expected: Any) -> None:
    assert parse_template(template).render(SCOPE) == expected


def test_every_pipe_is_covered_by_the_table() -> None:
    used = {p for t, _ in CASES for p in PIPES if f"| {p}" in t or f"|{p}" in t}
    assert used == set(PIPES)


@pytest.mark.parametrize(
    ("template", "message", "position"),
    [
        ("{input.x", "expected '}'", 8),
        ("a } b", "unmatched '}'", 2),
        ("{input.x | uper}", "unknown pipe 'uper'; did you mean 'upper'?", 11),
        ("{input.x | truncate}", "takes 1 argument(s), got 0", 11),
        ("{input.x | replace(a)}", "takes 2 argument(s), got 1", 11),
        ("{input.x | upper(1)}", "takes 0 argument(s), got 1", 11),
        ("{input.x | match('(unclosed')}", "invalid regular expression", 11),
        ("{'open}", "unclosed string", 1),
        ("{input. }", "expected a field name", 7),
        ("{input.x | join(a}", "'}' inside pipe arguments", 17),
        ("{}", "expected a name", 1),
    ],
)
def test_syntax_errors_name_the_position(template: str, message: str, position: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_template(template)
    assert message in str(info.value)
    assert info.value.position == position
    assert template in str(info.value)


def test_over_long_template_is_refused() -> None:
    with pytest.raises(ExpressionSyntaxError, match="MAX_TEMPLATE_CHARS"):
        parse_template("x" * (MAX_TEMPLATE_CHARS + 1))


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ExpressionSyntaxError, match="MAX_DEPTH"):
        parse_template("{" + "list(" * 20 + "1" + ")" * 20 + "}")


def test_too_many_pipes_are_refused() -> None:
    with pytest.raises(ExpressionSyntaxError, match="MAX_PIPES"):
        parse_template("{input.x" + " | string" * 65 + "}")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{input.missing | required}", "required: the value is missing"),
        ("{input.name | int}", "int: 'Big File' is not a number"),
        ("{input.flag | int}", "int: got a boolean"),
        ("{input.name | gt(3)}", "compares numbers only"),
        ("{input.x | upper}", "expects text, got a number"),
        ("{inptu.x}", "unknown namespace 'inptu'"),
        ("{input.x | join}", "expects a list"),
    ],
)
def test_data_errors_name_the_pipe(template: str, message: str) -> None:
    with pytest.raises(ExpressionEvalError, match=message):
        parse_template(template).render(SCOPE)


def test_result_size_is_bounded() -> None:
    scope = {"input": {"s": "x" * 600_000}}
    with pytest.raises(ExpressionEvalError, match="MAX_TEXT"):
        parse_template("{input.s}{input.s}").render(scope)
    with pytest.raises(ExpressionEvalError, match="MAX_TEXT"):
        parse_template("{input.s | append($input.s)}").render(scope)


def test_redos_pattern_runs_in_linear_time() -> None:
    scope = {"input": {"s": "a" * 50_000}}
    assert parse_template("{input.s | match('(a+)+b')}").render(scope) is False


def test_namespaces_and_references() -> None:
    template = parse_template("{fetch.title | default($input.t)} {list(a.x, 'k')}")
    assert template.namespaces() == {"fetch", "input", "a"}
    assert ("fetch", "title") in template.references()
    assert not template.is_single_expression
    assert parse_template("{input}").is_single_expression


@pytest.mark.parametrize("value", [None, False, 0, 0.0, "", [], {}])
def test_falsy_values(value: Any) -> None:
    assert not is_truthy(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_a_single_reference_returns_the_value_unchanged(value: Any) -> None:
    assert parse_template("{input.x}").render({"input": {"x": value}}) == value


@given(json_values.filter(lambda v: v is not None and not isinstance(v, str)))
def test_string_pipe_round_trips_through_json(value: Any) -> None:
    text = parse_template("{input.x | string}").render({"input": {"x": value}})
    assert typed_equal(json.loads(text), value)


@given(json_values, st.integers(-3, 3) | st.booleans() | st.text(max_size=3))
def test_eq_pipe_agrees_with_typed_equality(value: Any, other: Any) -> None:
    scope = {"input": {"x": value, "y": other}}
    assert parse_template("{input.x | eq($input.y)}").render(scope) is typed_equal(value, other)
