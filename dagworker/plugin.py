"""The plugin API: ``@plugin``, the registry, and how a plugin's return value becomes artifacts.

A pipeline can only call registered plugins; a pipeline file never names code to import.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagworker.context import TaskContext
from dagworker.errors import (
    DuplicatePlugin,
    PluginError,
    PluginOutputError,
    PluginSignatureError,
    UnknownPlugin,
    did_you_mean,
)

PluginFunc = Callable[..., Any]
RollbackFunc = Callable[[TaskContext], Any]

_OPTIONS = frozenset(
    {
        "queue",
        "retry",
        "rollback_retry",
        "timeout_s",
        "compensate_failed",
        "version",
        "description",
    }
)
_RETRY_KEYS = frozenset({"max_attempts", "backoff_s", "max_backoff_s", "jitter"})


@dataclass(frozen=True)
class Parameter:
    name: str
    required: bool


@dataclass
class Plugin:
    """A registered plugin: the function, its declared parameters and its defaults."""

    name: str
    func: PluginFunc
    parameters: tuple[Parameter, ...]
    accepts_any: bool  # the function takes **kwargs
    queue: str | None = None
    retry: Mapping[str, Any] | None = None
    #: Retries of the compensation; by default 3 attempts, backoff from 1 s.
    rollback_retry: Mapping[str, Any] | None = None
    timeout_s: float | None = None
    compensate_failed: bool = False
    version: str = "1"
    description: str = ""
    rollback_func: RollbackFunc | None = field(default=None, repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Calling the decorated name directly still calls the function (handy in unit tests).
        return self.func(*args, **kwargs)

    @property
    def parameter_names(self) -> set[str]:
        return {p.name for p in self.parameters}

    @property
    def required_parameters(self) -> set[str]:
        return {p.name for p in self.parameters if p.required}

    def rollback(self, func: RollbackFunc) -> RollbackFunc:
        """Register the compensation of this plugin: ``@myplugin.rollback``."""
        _check_context_first(self.name + ".rollback", func)
        extra = [p for p in list(inspect.signature(func).parameters)[1:]]
        if extra:
            raise PluginSignatureError(
                f"rollback of plugin {self.name!r} takes only the context; remove {extra}"
            )
        self.rollback_func = func
        return func

    def compensate(self, ctx: TaskContext) -> None:
        """Call the rollback (sync or async); its return value is ignored."""
        if self.rollback_func is None:
            raise PluginError(f"plugin {self.name!r} has no rollback")
        result = self.rollback_func(ctx)
        if inspect.iscoroutine(result):
            asyncio.run(result)

    def iter_outputs(self, ctx: TaskContext, kwargs: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Call the plugin and yield its artifacts' fields, checking each is a JSON object."""
        result = self.func(ctx, **kwargs)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        if inspect.isasyncgen(result):
            result = _drain_async(result)
        yield from _as_artifacts(self.name, result)


def _drain_async(agen: AsyncIterator[Any]) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def _as_artifacts(name: str, result: Any) -> Iterator[dict[str, Any]]:
    if result is None:
        return
    if isinstance(result, Mapping):
        yield _checked(name, result, 0)
        return
    if isinstance(result, str | bytes) or not isinstance(result, Iterable):
        raise PluginOutputError(
            f"plugin {name!r} returned {type(result).__name__}; return a dict (one artifact), "
            "a list or iterator of dicts, or None"
        )
    for i, item in enumerate(result):
        if not isinstance(item, Mapping):
            raise PluginOutputError(
                f"plugin {name!r} output #{i} is {type(item).__name__}, not a dict"
            )
        yield _checked(name, item, i)


def _reject_nan(value: str) -> Any:
    raise ValueError(value)


def _checked(name: str, item: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Prove an artifact is JSON by round-tripping it (keys must be strings, no NaN/objects)."""
    try:
        text = json.dumps(item, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PluginOutputError(
            f"plugin {name!r} output #{index} is not JSON-serialisable: {exc}"
        ) from exc
    data: dict[str, Any] = json.loads(text, parse_constant=_reject_nan)
    if any(not isinstance(k, str) for k in item):
        raise PluginOutputError(f"plugin {name!r} output #{index} has non-string keys")
    return data


def _check_context_first(name: str, func: Callable[..., Any]) -> inspect.Signature:
    if not callable(func):
        raise PluginSignatureError(f"plugin {name!r}: {func!r} is not callable")
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise PluginSignatureError(
            f"plugin {name!r}: the first parameter must take the TaskContext, e.g. "
            f"def {getattr(func, '__name__', 'f')}(ctx: TaskContext, ...)"
        )
    return sig


def _parameters(name: str, func: PluginFunc) -> tuple[tuple[Parameter, ...], bool]:
    sig = _check_context_first(name, func)
    out: list[Parameter] = []
    accepts_any = False
    for p in list(sig.parameters.values())[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
        elif p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise PluginSignatureError(
                f"plugin {name!r}: parameter {p.name!r} must be passable by keyword "
                "(bindings and config are keyword arguments)"
            )
        else:
            out.append(Parameter(p.name, p.default is inspect.Parameter.empty))
    return tuple(out), accepts_any


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    for key in options:
        if key not in _OPTIONS:
            raise PluginSignatureError(
                f"plugin {name!r}: unknown option {key!r};"
                f"{did_you_mean(key, _OPTIONS) or ' options are ' + ', '.join(sorted(_OPTIONS))}"
            )
    for option in ("retry", "rollback_retry"):
        retry = options.get(option)
        if retry is None:
            continue
        bad = set(retry) - _RETRY_KEYS
        if bad:
            raise PluginSignatureError(f"plugin {name!r}: unknown {option} keys {sorted(bad)}")
        attempts = retry.get("max_attempts", 1)
        if not isinstance(attempts, int) or attempts < 1:
            raise PluginSignatureError(
                f"plugin {name!r}: {option}.max_attempts must be an int >= 1"
            )
    timeout = options.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, int | float) or not 0 < timeout < math.inf):
        raise PluginSignatureError(f"plugin {name!r}: timeout_s must be a positive number")


class Registry:
    """Name -> Plugin. Registering a different function under a taken name is an error."""

    def __init__(self) -> None:
        self._plugins: dict[str, Plugin] = {}

    def register(self, name: str, func: PluginFunc, **options: Any) -> Plugin:
        _check_options(name, options)
        if not name or not all(c.isalnum() or c in "_-." for c in name):
            raise PluginSignatureError(f"plugin name {name!r}: use letters, digits, '_', '-', '.'")
        existing = self._plugins.get(name)
        if existing is not None:
            if _same_function(existing.func, func):
                return existing  # the same module imported twice (entry point + settings)
            raise DuplicatePlugin(
                f"plugin {name!r} is already registered by {_where(existing.func)}; "
                f"{_where(func)} cannot register it again (pick another name)"
            )
        params, accepts_any = _parameters(name, func)
        version = str(options.pop("version", "1"))
        plug = Plugin(
            name,
            func,
            params,
            accepts_any,
            version=version,
            description=options.pop("description", None) or (func.__doc__ or "").strip(),
            **options,
        )
        self._plugins[name] = plug
        return plug

    def unregister(self, name: str) -> None:
        self._plugins.pop(name, None)

    def get(self, name: str) -> Plugin:
        try:
            return self._plugins[name]
        except KeyError:
            raise UnknownPlugin(name, self._plugins) from None

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def all(self) -> list[Plugin]:
        return [self._plugins[n] for n in self.names()]


def _where(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return a is b or (
        code_a is not None
        and code_b is not None
        and code_a.co_filename == code_b.co_filename
        and code_a.co_firstlineno == code_b.co_firstlineno
    )


#: The process-wide registry workers and clients use.
registry = Registry()


def plugin(name: str | PluginFunc | None = None, /, **options: Any) -> Any:
    """Register a plugin: ``@plugin``, ``@plugin("name")`` or ``@plugin("name", queue=..., ...)``.

    Options: queue, retry (dict), rollback_retry (dict), timeout_s, compensate_failed, version,
    description. Unknown
    options are refused.
    """
    if callable(name):
        return registry.register(name.__name__, name)
    if name is not None and not isinstance(name, str):
        raise PluginError(f"@plugin takes a name string, not {type(name).__name__}")

    def decorate(func: PluginFunc) -> Plugin:
        return registry.register(name or func.__name__, func, **options)

    return decorate
