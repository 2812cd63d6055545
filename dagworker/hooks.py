"""Terminal-state hooks (DESIGN §7): Python callables run once per run when it ends.

    from dagworker import on_run

    @on_run("failed", "rollback_failed")
    def page_someone(status: RunStatus) -> None: ...

Hooks are registered in plugin modules (so every worker has them) and run on a worker as the
Celery task ``dagworker.hooks``. The commit that ends a run also schedules its hooks, in the
same atomic step, so a crash right after cannot lose them; a claim in Redis makes each event
call its hooks once per run, also when the final completion was delivered twice.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from dagworker.errors import PluginSignatureError, did_you_mean
from dagworker.metrics import recorder
from dagworker.states import RunState

log = logging.getLogger("dagworker.hooks")

HOOK_EVENTS = frozenset(
    {
        RunState.COMPLETED.value,
        RunState.FAILED.value,
        RunState.CANCELLED.value,
        RunState.ROLLED_BACK.value,
        RunState.ROLLBACK_FAILED.value,
    }
)

Hook = Callable[[Any], Any]
_hooks: dict[str, list[Hook]] = {event: [] for event in HOOK_EVENTS}


def on_run(*events: str) -> Callable[[Hook], Hook]:
    """Register a hook for one or more terminal run states; it receives the RunStatus."""
    if not events:
        raise PluginSignatureError(
            "@on_run needs at least one event: " + ", ".join(sorted(HOOK_EVENTS))
        )
    for event in events:
        if event not in HOOK_EVENTS:
            raise PluginSignatureError(
                f"@on_run: unknown event {event!r};"
                f"{did_you_mean(event, HOOK_EVENTS) or ' use ' + ', '.join(sorted(HOOK_EVENTS))}"
            )

    def register(func: Hook) -> Hook:
        params = [
            p
            for p in inspect.signature(func).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if len(params) != 1:
            raise PluginSignatureError(
                f"hook {func.__qualname__}: takes exactly one required argument (the RunStatus)"
            )
        for event in events:
            if func not in _hooks[event]:
                _hooks[event].append(func)
        return func

    return register


def hooks_for(event: str) -> list[Hook]:
    return list(_hooks.get(event, ()))


def listened(event: str) -> bool:
    """Whether a run ending in ``event`` may have hooks to call: one is registered here, or this
    process cannot tell (it is not a worker, and may not have loaded the plugin modules, which
    is where hooks are registered). A child run's parent waits whatever this says."""
    return bool(hooks_for(event)) or not recorder.bound


def unregister(func: Hook) -> None:
    for funcs in _hooks.values():
        if func in funcs:
            funcs.remove(func)


def call_hooks(event: str, status: Any) -> int:
    """Call every hook of ``event``; a failing hook is logged and does not stop the others."""
    called = 0
    for func in hooks_for(event):
        try:
            func(status)
            called += 1
        except Exception:
            log.exception(
                "hook %s for run %s (%s) failed",
                func.__qualname__,
                getattr(status, "run_id", "?"),
                event,
            )
    return called
