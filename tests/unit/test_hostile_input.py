"""Hostile and bad input refused early, clearly and cheaply (no Redis, no Celery).

Each case names the problem in its error and is bounded in time: a pipeline file, an
expression or a filter built to be slow or huge must not stall the process that reads it.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dagworker.artifact import Artifact
from dagworker.errors import (
    ExpressionEvalError,
    ExpressionSyntaxError,
    PipelineInvalid,
    PipelineLoadError,
)
from dagworker.expressions import MAX_PIPES, MAX_TEXT, parse_template
from dagworker.filters import apply_edge_filter
from dagworker.pipeline import (
    MAX_PIPELINE_BYTES,
    MAX_PIPELINE_DEPTH,
    EdgeFilter,
    parse_document,
    read_pipeline_file,
)
from dagworker.plugin import Registry
from dagworker.settings import Settings
from dagworker.validation import validate
from dagworker.worker import broker_use_ssl, celery_config

FAST = 2.0  # seconds: generous for a shared 2-core machine, far below "stalls a worker"


def timed(fn: Callable[[], Any]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def refused(text: str, match: str) -> float:
    """Seconds parse_document took to refuse ``text`` with an error matching ``match``."""

    def parse() -> None:
        with pytest.raises(PipelineLoadError, match=match):
            parse_document(text, "p.yaml")

    return timed(parse)


# -- malformed documents ------------------------------------------------------------------------

MALFORMED = {
    "yaml: bad indentation": (
        "name: p\nnodes:\n  - slug: a\n   plugin: x\n",
        r"p.yaml: invalid YAML",
    ),
    "yaml: unclosed flow": ("name: p\nnodes: [{slug: a\n", r"p.yaml: invalid YAML"),
    "yaml: tab indentation": ("name: p\nnodes:\n\t- slug: a\n", r"p.yaml: invalid YAML"),
    "yaml: binary": ("\x00\x01garbage", r"p.yaml: invalid YAML: unacceptable character"),
    "yaml: python tag": (
        "name: !!python/object/apply:os.system ['touch /tmp/dw-pwned']\nnodes: []\n",
        r"invalid YAML: could not determine a constructor for the tag .*python/object/apply",
    ),
    "yaml: a list at the top": ("- a\n- b\n", r"a mapping at the top level, not list"),
    "yaml: a scalar at the top": ("just text\n", r"a mapping at the top level, not str"),
    "yaml: duplicate key": (
        "name: p\nnodes:\n  - {slug: a, plugin: x, depends_on: [b], depends_on: []}\n",
        r"p.yaml: invalid YAML: duplicate key 'depends_on'",
    ),
    "json: trailing comma": ('{"name": "p", "nodes": [],}', r"p.yaml: invalid JSON at line 1"),
    "json: unclosed": ('{"name": "p", "nodes": [\n', r"invalid JSON at line 2"),
    "json: duplicate key": ('{"name": "p", "nodes": [], "name": "q"}', r"duplicate key 'name'"),
    "json: NaN": ('{"name": "p", "nodes": [], "x": NaN}', r"NaN is not JSON"),
    "json: Infinity": ('{"name": "p", "nodes": [], "x": -Infinity}', r"-Infinity is not JSON"),
    "json: 5000-digit integer": ('{"name": "p", "x": ' + "9" * 5000 + "}", r"invalid value"),
    "yaml: .nan": ("name: p\nx: .nan\n", r"nan is not a JSON number"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_documents_are_refused_naming_the_problem(case: str) -> None:
    text, match = MALFORMED[case]
    assert refused(text, match) < FAST


def test_python_tags_never_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\nnodes: []\n"
    with pytest.raises(PipelineLoadError):
        parse_document(text)
    assert not marker.exists()


def test_yaml_merge_keys_may_still_override() -> None:
    # "<<" then an explicit key is an override, not a duplicate
    text = (
        "base: &b {plugin: x, config: {n: 1}}\nname: p\nnodes:\n  - {<<: *b, slug: a, plugin: y}\n"
    )
    assert parse_document(text)["nodes"][0] == {"plugin": "y", "config": {"n": 1}, "slug": "a"}


# -- size and shape -------------------------------------------------------------------------------


def test_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write("name: p\nnodes: []\n# " + "x" * (MAX_PIPELINE_BYTES + 10) + "\n")
    start = time.monotonic()
    with pytest.raises(
        PipelineLoadError, match=rf"huge.yaml: \d+ bytes is over the {MAX_PIPELINE_BYTES}"
    ):
        read_pipeline_file(path)
    assert time.monotonic() - start < FAST


def test_huge_text_is_refused() -> None:
    text = '{"name": "p", "nodes": [], "pad": "' + "é" * (MAX_PIPELINE_BYTES // 2) + '"}'
    assert refused(text, rf"bytes is over the {MAX_PIPELINE_BYTES}-byte limit") < FAST


def test_not_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PipelineLoadError, match="not UTF-8"):
        read_pipeline_file(path)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": ' * 100_000 + "1" + "}" * 100_000,
        "a: " + "[" * 400_000 + "]" * 400_000,
        "a: " + "[" * 400_000,
        "a: " + "{b: " * 150_000,
    ],
    ids=["json", "yaml-flow", "yaml-unclosed", "yaml-mappings"],
)
def test_deep_nesting_is_refused_quickly(text: str) -> None:
    assert refused(text, "nesting too deep|invalid YAML") < 3 * FAST


def test_nesting_just_past_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    def nested(levels: int) -> str:  # the top object, then levels - 1 nested lists
        return json.dumps({"name": "p", "x": json.loads("[" * (levels - 1) + "]" * (levels - 1))})

    assert parse_document(nested(MAX_PIPELINE_DEPTH))["name"] == "p"
    refused(nested(MAX_PIPELINE_DEPTH + 1), f"nesting deeper than {MAX_PIPELINE_DEPTH} levels")


def test_billion_laughs_is_refused_without_expanding() -> None:
    # Given 9 levels of 9 aliases: ~400 bytes that stand for 9**9 (387 million) values
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    text = "\n".join([*lines, "name: p", "nodes: [{slug: a, plugin: x, config: {v: *l9}}]"])
    assert len(text) < 1000
    assert refused(text, "YAML aliases expand to more values than the document has bytes") < FAST


def test_a_few_aliases_are_fine() -> None:
    text = (
        "c: &c {n: 1}\nname: p\nnodes:\n"
        "  - {slug: a, plugin: x, config: *c}\n  - {slug: b, plugin: x, config: *c}\n"
    )
    assert [n["config"] for n in parse_document(text)["nodes"]] == [{"n": 1}, {"n": 1}]


# -- plugins named by import path -----------------------------------------------------------------


def _registry() -> Registry:
    reg = Registry()

    def fetch_files(ctx: Any) -> None:
        return None

    reg.register("fetch_files", fetch_files)
    return reg


@pytest.mark.parametrize(
    "name",
    ["os.system", "dagworker.worker.app", "subprocess.run", "this", "builtins.eval", "os:system"],
)
def test_a_pipeline_cannot_reach_code_that_is_not_a_registered_plugin(name: str) -> None:
    modules = set(sys.modules)
    with pytest.raises(PipelineInvalid) as info:
        validate({"name": "p", "nodes": [{"slug": "a", "plugin": name}]}, _registry())
    assert f"node 'a': plugin: unknown plugin {name!r}" in str(info.value)
    assert set(sys.modules) - modules == set(), "validation imported something"


def test_unknown_plugin_suggests_the_closest_name() -> None:
    with pytest.raises(
        PipelineInvalid, match=r"unknown plugin 'fetch_file'; did you mean 'fetch_files'\?"
    ):
        validate({"name": "p", "nodes": [{"slug": "a", "plugin": "fetch_file"}]}, _registry())


def test_cycle_is_named_with_its_nodes() -> None:
    nodes = [
        {"slug": "a", "plugin": "fetch_files", "depends_on": ["c"]},
        {"slug": "b", "plugin": "fetch_files", "depends_on": ["a"]},
        {"slug": "c", "plugin": "fetch_files", "depends_on": ["b"]},
        {"slug": "d", "plugin": "fetch_files", "depends_on": ["d"]},
    ]
    with pytest.raises(
        PipelineInvalid, match=r"cycle: (a|b|c) -> .* \(a pipeline must be acyclic\)"
    ):
        validate({"name": "p", "nodes": nodes}, _registry())


# -- expressions and filters built to be slow or huge ----------------------------------------------

SCOPE: dict[str, Any] = {
    "input": {"a": "a" * 200_000, "n": 3, "many": ["ab"] * 100_000},
    "config": {},
    "run": {},
    "task": {},
}


def render(template: str) -> Any:
    return parse_template(template).render(SCOPE)


def test_redos_pattern_in_match_pipe_is_linear() -> None:
    assert timed(lambda: render("{input.a | match('(a+)+b')}")) < FAST
    assert render("{input.a | match('(a+)+b')}") is False
    assert render("{input.a | match('(a|aa)*$')}") is True


def test_redos_pattern_in_matches_filter_is_linear() -> None:
    arts = [
        Artifact(f"s:0:{i}", "s", None, {"t": "a" * 100_000 + ("b" if i == 7 else "")})
        for i in range(20)
    ]
    edge = EdgeFilter.model_validate(
        {"rules": [{"field": "t", "op": "matches", "value": "^(a+)+b$"}]}
    )
    start = time.monotonic()
    kept = apply_edge_filter(edge, arts)
    assert time.monotonic() - start < FAST
    assert [a.id for a in kept] == ["s:0:7"]


def test_backreferences_are_refused_not_run() -> None:
    # RE2 has no backtracking features, so a pattern that needs them cannot even be written
    with pytest.raises(ExpressionSyntaxError, match="invalid regular expression"):
        parse_template(r"{input.a | match('(a*)\\1b')}")
    with pytest.raises(PipelineInvalid, match=r"rules\[0\] \(t matches\): invalid regular"):
        validate(
            {
                "name": "p",
                "nodes": [
                    {"slug": "a", "plugin": "fetch_files"},
                    {
                        "slug": "b",
                        "plugin": "fetch_files",
                        "depends_on": ["a"],
                        "edge_filters": {
                            "a": {"rules": [{"field": "t", "op": "matches", "value": r"(a*)\1b"}]}
                        },
                    },
                ],
            },
            _registry(),
        )


@pytest.mark.parametrize(
    "template",
    [
        "{input.a | replace(a, " + "b" * 2000 + ")}",  # 200k x 2000 = 400 MB if built
        "{input.a | replace('', bbbbbbbbbbbb)}",  # "" matches between every character
        "{input.many | join(" + "-" * 2000 + ")}",  # 100k x 2000 = 200 MB
        "{input.n | pad(2000000000, x)}",  # 2 GB
        "{input.a" + " | append($input.a)" * 10 + "}",  # doubling chain
    ],
    ids=["replace", "replace-empty", "join", "pad", "append-chain"],
)
def test_results_past_max_text_fail_fast_without_being_built(template: str) -> None:
    def attempt() -> None:
        with pytest.raises(ExpressionEvalError, match=f"MAX_TEXT={MAX_TEXT}"):
            render(template)

    assert timed(attempt) < FAST


def test_pipe_chains_are_bounded() -> None:
    ok = "{input.n" + " | string | int" * (MAX_PIPES // 2) + "}"
    assert render(ok) == 3
    with pytest.raises(ExpressionSyntaxError, match=f"MAX_PIPES={MAX_PIPES}"):
        parse_template("{input.n" + " | string" * (MAX_PIPES + 1) + "}")


def test_the_heaviest_template_allowed_is_still_fast() -> None:
    # MAX_PIPES counts every pipe of a template, so 64 is the most work one template can ask
    # for; each pipe over the largest values allowed (100,000 items, 1 MB of text)
    heavy = "{input.many" + " | join(,) | split(,)" * (MAX_PIPES // 2 - 1) + " | length}"
    start = time.monotonic()
    assert render(heavy) == 100_000
    assert time.monotonic() - start < 2 * FAST
    with pytest.raises(ExpressionSyntaxError, match=f"MAX_PIPES={MAX_PIPES}"):
        parse_template("{input.many | length}" * (MAX_PIPES + 1))


# -- TLS to the broker ----------------------------------------------------------------------------


def test_rediss_broker_verifies_certificates_by_default() -> None:
    # kombu alone would connect to rediss:// without checking the certificate (CERT_NONE)
    assert broker_use_ssl("rediss://:pw@redis.example:6380/0") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }
    config = celery_config(Settings(redis_url="rediss://redis.example:6380/0"))
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_rediss_options_in_the_url_are_left_to_kombu() -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=none"
    assert broker_use_ssl(url) == {}
    assert broker_use_ssl("rediss://h/0?ssl_ca_certs=/ca.pem") == {}


def test_plain_redis_broker_has_no_tls() -> None:
    assert broker_use_ssl("redis://127.0.0.1:6379/0") is False
    settings = Settings(redis_url="redis://a/0", broker_url="rediss://b/0")
    assert celery_config(settings)["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
