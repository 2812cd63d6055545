"""Bindings (DESIGN §4.4): a node's keyword arguments computed per task from its inputs.

A string binding is an expression template; ``{value, when}`` is conditional (the parameter is
omitted when ``when`` renders falsy); any other JSON value is a literal. Bindings are evaluated
once, when the node launches, and persisted with the task, so a redelivered task sees the same
arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagworker.errors import ExpressionError, ExpressionEvalError
from dagworker.expressions import Template, is_truthy, parse_template
from dagworker.pipeline import ConditionalBinding, Node


@dataclass(frozen=True)
class CompiledBinding:
    param: str
    value: Template | Any  # a Template, or a literal JSON value
    when: Template | None = None

    def render(self, scope: Mapping[str, Any]) -> tuple[bool, Any]:
        if self.when is not None and not is_truthy(self.when.render(scope)):
            return False, None
        if isinstance(self.value, Template):
            return True, self.value.render(scope)
        return True, self.value


def compile_bindings(node: Node) -> tuple[CompiledBinding, ...]:
    """Parse a node's bindings (already validated; a syntax error here is a bug upstream)."""
    out = []
    for param, binding in node.bindings.items():
        if isinstance(binding, ConditionalBinding):
            value = (
                parse_template(binding.value) if isinstance(binding.value, str) else binding.value
            )
            out.append(CompiledBinding(param, value, parse_template(binding.when)))
        elif isinstance(binding, str):
            out.append(CompiledBinding(param, parse_template(binding)))
        else:
            out.append(CompiledBinding(param, binding))
    return tuple(out)


def task_scope(
    node: Node,
    inputs: Mapping[str, Sequence[Mapping[str, Any]]],
    run_input: Mapping[str, Any],
    run_id: str,
    pipeline: str,
    index: int,
    repeat_index: int = 0,
) -> dict[str, Any]:
    scope: dict[str, Any] = {dep: list(inputs.get(dep, ())) for dep in node.depends_on}
    scope.update(
        {
            "input": dict(run_input),
            "config": dict(node.config),
            "run": {"id": run_id, "pipeline": pipeline},
            "task": {"index": index, "repeat_index": repeat_index},
        }
    )
    return scope


def evaluate(
    node: Node, compiled: Sequence[CompiledBinding], scope: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments for one task; a data error names the node and the binding."""
    kwargs: dict[str, Any] = {}
    for binding in compiled:
        try:
            keep, value = binding.render(scope)
        except ExpressionError as exc:
            raise ExpressionEvalError(
                f"node {node.slug!r}, binding {binding.param!r}: {exc}"
            ) from exc
        if keep:
            kwargs[binding.param] = value
    return kwargs
