"""Plugin registration, output checking, states and settings (no services)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from dagworker.context import TaskContext
from dagworker.errors import (
    ConfigError,
    DuplicatePlugin,
    IllegalTransition,
    PluginOutputError,
    PluginSignatureError,
    UnknownPlugin,
)
from dagworker.plugin import Registry
from dagworker.settings import Settings
from dagworker.states import NodeState, RunState, check_node_transition, check_run_transition


def ctx() -> TaskContext:
    return TaskContext(run_id="r", pipeline="p", node="n", task_index=0, attempt=1)


def test_signature_is_read_at_registration() -> None:
    reg = Registry()

    def transcode(ctx: TaskContext, title: str, fmt: str = "mp4") -> dict[str, Any]:
        return {}

    plug = reg.register("transcode", transcode)
    assert plug.required_parameters == {"title"}
    assert plug.parameter_names == {"title", "fmt"}
    assert not plug.accepts_any


@pytest.mark.parametrize(
    "func",
    [lambda: None, lambda *args: None, lambda ctx, a, /, b: None],
    ids=["no-context", "var-positional-only", "positional-only-param"],
)
def test_bad_signatures_fail_at_registration(func: Any) -> None:
    with pytest.raises(PluginSignatureError):
        Registry().register("bad", func)


def test_unknown_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(PluginSignatureError, match="did you mean 'queue'"):
        Registry().register("x", lambda ctx: None, queu="gpu")


def test_duplicate_name_from_another_function_is_refused() -> None:
    reg = Registry()
    reg.register("same", lambda ctx: None)
    with pytest.raises(DuplicatePlugin, match="already registered"):
        reg.register("same", lambda ctx: {"other": 1})


def test_unknown_plugin_suggests_the_closest_name() -> None:
    reg = Registry()
    reg.register("merge_results", lambda ctx: None)
    with pytest.raises(UnknownPlugin, match="did you mean 'merge_results'"):
        reg.get("merge_result")


def _outputs(func: Any) -> list[dict[str, Any]]:
    reg = Registry()
    return list(reg.register("p", func).iter_outputs(ctx(), {}))


def gen(ctx: TaskContext) -> Iterator[dict[str, Any]]:
    yield {"a": 1}
    yield {"a": 2}


async def coro(ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"async": True}


async def agen(ctx: TaskContext) -> Any:
    for i in range(3):
        yield {"i": i}


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (lambda ctx: {"a": 1}, [{"a": 1}]),
        (lambda ctx: [{"a": 1}, {"b": 2}], [{"a": 1}, {"b": 2}]),
        (lambda ctx: None, []),
        (gen, [{"a": 1}, {"a": 2}]),
        (coro, [{"async": True}]),
        (agen, [{"i": 0}, {"i": 1}, {"i": 2}]),
    ],
    ids=["dict", "list", "none", "iterator", "async", "async-iterator"],
)
def test_return_shapes_become_artifacts(func: Any, expected: list[dict[str, Any]]) -> None:
    assert _outputs(func) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": object()}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ("text", "returned str"),
        ([1, 2], "output #0 is int"),
        (42, "returned int"),
    ],
)
def test_non_json_outputs_fail_clearly(value: Any, message: str) -> None:
    with pytest.raises(PluginOutputError, match=message):
        _outputs(lambda ctx: value)


def test_run_transitions_follow_the_table() -> None:
    check_run_transition(RunState.RUNNING, RunState.COMPLETED)
    with pytest.raises(IllegalTransition):
        check_run_transition(RunState.COMPLETED, RunState.RUNNING)
    with pytest.raises(IllegalTransition):
        check_node_transition(NodeState.SKIPPED, NodeState.RUNNING)


def test_settings_from_env_and_bad_values() -> None:
    s = Settings.from_env(
        {
            "DAGWORKER_KEY_PREFIX": "prod",
            "DAGWORKER_PLUGINS": "a.b, c",
            "DAGWORKER_LOCK_TIMEOUT": "2.5",
        }
    )
    assert s.key_prefix == "prod" and s.plugins == ("a.b", "c") and s.lock_timeout == 2.5
    assert s.effective_broker_url == s.redis_url
    with pytest.raises(ConfigError, match="DAGWORKER_LOCK_TIMEOUT"):
        Settings.from_env({"DAGWORKER_LOCK_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="DAGWORKER_KEY_PREFIX"):
        Settings.from_env({"DAGWORKER_KEY_PREFIX": "has space"})


def test_result_ttl_setting() -> None:
    assert Settings.from_env({}).result_ttl == 7 * 86_400
    assert Settings.from_env({"DAGWORKER_RESULT_TTL": "0"}).result_ttl == 0  # keep for ever
    for bad in ("-1", "nan"):
        with pytest.raises(ConfigError, match="DAGWORKER_RESULT_TTL"):
            Settings.from_env({"DAGWORKER_RESULT_TTL": bad})


def test_task_events_setting() -> None:
    from dagworker.worker import celery_config

    # Given the default, then the setting turned off in its accepted spellings
    assert Settings.from_env({}).task_events is True
    assert celery_config(Settings.from_env({}))["worker_send_task_events"] is True
    for off in ("0", "false", "No", "off"):
        settings = Settings.from_env({"DAGWORKER_TASK_EVENTS": off})
        assert settings.task_events is False
        assert celery_config(settings)["worker_send_task_events"] is False
    # Then anything else is refused, naming the variable
    with pytest.raises(ConfigError, match="DAGWORKER_TASK_EVENTS"):
        Settings.from_env({"DAGWORKER_TASK_EVENTS": "maybe"})
