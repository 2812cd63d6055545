"""One error hierarchy for dagworker.

Every message names the culprit and, where there is one, the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " did you mean 'x'?" for the closest choice, or "" when none is close."""
    close = get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


class DagworkerError(Exception):
    """Base class for every error dagworker raises."""


# -- pipelines -----------------------------------------------------------------------------------


class PipelineError(DagworkerError):
    """Raised when a pipeline cannot be loaded or used."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (node and field) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class PipelineInvalid(PipelineError):
    """Raised when a pipeline fails validation; carries every problem found."""

    def __init__(self, problems: Sequence[Problem], pipeline: str | None = None) -> None:
        self.problems = list(problems)
        self.pipeline = pipeline
        head = f"pipeline {pipeline!r} is invalid" if pipeline else "pipeline is invalid"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head} ({len(self.problems)} problem(s)):\n{lines}")


class PipelineLoadError(PipelineError):
    """Raised when a pipeline file cannot be read or parsed (YAML/JSON syntax, size, depth)."""


class PipelineNotRegistered(PipelineError):
    """Raised when no registered pipeline (or version) has the given name."""


class VersionConflict(PipelineError):
    """Raised when a pipeline is registered under an existing explicit version with different
    content (a version, once registered, never changes)."""


class ExpressionError(PipelineError):
    """Raised when a binding expression is malformed or cannot be evaluated."""

    def __init__(self, message: str, expression: str = "", position: int | None = None) -> None:
        self.expression = expression
        self.position = position
        where = ""
        if expression:
            where = f" in {expression!r}"
            if position is not None:
                where += f" at position {position}"
        super().__init__(f"{message}{where}")


class ExpressionSyntaxError(ExpressionError):
    """Raised when an expression does not parse; known before any task is sent."""


class ExpressionEvalError(ExpressionError):
    """Raised when an expression fails on a task's data; fails that task."""


# -- plugins -------------------------------------------------------------------------------------


class PluginError(DagworkerError):
    """Raised when a plugin is misdeclared, missing or misbehaves."""


class PluginSignatureError(PluginError):
    """Raised at registration when a plugin's signature does not fit the plugin API."""


class DuplicatePlugin(PluginError):
    """Raised when two plugins are registered under the same name."""


class UnknownPlugin(PluginError):
    """Raised when a name is not a registered plugin."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        super().__init__(f"unknown plugin {name!r};{did_you_mean(name, known) or ' none is close'}")


class PluginOutputError(PluginError):
    """Raised when a plugin returns something that is not an artifact (a JSON object)."""


class PluginLoadError(PluginError):
    """Raised when a plugin module named in settings or an entry point cannot be imported."""


# -- runs ----------------------------------------------------------------------------------------


class RunError(DagworkerError):
    """Raised when a run cannot be found or does not allow what was asked."""


class RunNotFound(RunError):
    """Raised when no run has the given id (under this key prefix)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        # A run that existed vanishes only with its Redis data (restart without persistence).
        super().__init__(
            f"no run {run_id!r} (check the id and DAGWORKER_KEY_PREFIX; "
            "runs do not survive a Redis restart without persistence)"
        )


class RunRefused(RunError):
    """Raised when a run-control request cannot be carried out as asked (the request is wrong,
    not the run): a state that does not allow it, an unknown node, a changed input."""


class IllegalTransition(RunRefused):
    """Raised when a state change is not in the transition table."""


class RunTimeout(RunError):
    """Raised when waiting for a run takes longer than the caller allowed."""


class LimitExceeded(RunError):
    """Raised when a run breaks a configured limit (fan-out, artifact size, ...)."""

    def __init__(self, limit: str, value: int, maximum: int) -> None:
        self.limit = limit
        super().__init__(
            f"limit {limit} exceeded: {value} > {maximum} (raise {limit} in the settings)"
        )


# -- store ---------------------------------------------------------------------------------------


class StoreError(DagworkerError):
    """Raised when run state in Redis cannot be read or written as expected."""


class LockNotAcquired(StoreError):
    """Raised when the per-run lock could not be taken in time."""


class StaleCommit(StoreError):
    """Raised when a commit is refused because the run changed since it was read."""


class ConfigError(DagworkerError):
    """Raised when a setting is missing or malformed."""
