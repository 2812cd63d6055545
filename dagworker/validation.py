"""Pipeline validation (DESIGN §3): every problem at once, each naming node and field.

Runs before anything is dispatched: ``dagworker validate``, ``Client.submit``. A pipeline that
fails validation sends no task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from dagworker.errors import (
    ExpressionSyntaxError,
    PipelineInvalid,
    Problem,
    UnknownPlugin,
    did_you_mean,
)
from dagworker.expressions import parse_template
from dagworker.filters import check_edge_filter
from dagworker.graph import Graph
from dagworker.pipeline import ConditionalBinding, InputField, Node, Pipeline
from dagworker.plugin import Registry

BUILTIN_NAMESPACES = frozenset({"input", "config", "run", "task"})
_NODE_KEYS = tuple(Node.model_fields)
_PIPELINE_KEYS = tuple(Pipeline.model_fields)


def _describe(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_problems(exc: ValidationError, where: str, keys: tuple[str, ...]) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = _describe(loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), keys if len(loc) == 1 else ())
            out.append(Problem(where, f"unknown key {field!r};{hint or ' remove it'}"))
        else:
            out.append(Problem(where, f"field {field!r}: {err['msg']}"))
    return out


def _node_where(raw: Any, index: int) -> str:
    slug = raw.get("slug") if isinstance(raw, dict) else None
    return f"node {slug!r}" if isinstance(slug, str) else f"node #{index + 1}"


def parse(raw: Mapping[str, Any] | Pipeline) -> tuple[Pipeline | None, list[Node], list[Problem]]:
    """Structural checks; returns the pipeline (if whole), the nodes that parsed, and problems."""
    if isinstance(raw, Pipeline):
        return raw, list(raw.nodes), []
    problems: list[Problem] = []
    raw_nodes = raw.get("nodes")
    nodes: list[Node] = []
    if isinstance(raw_nodes, list):
        for i, item in enumerate(raw_nodes):
            try:
                nodes.append(Node.model_validate(item))
            except ValidationError as exc:
                problems += _pydantic_problems(exc, _node_where(item, i), _NODE_KEYS)
    top = {k: v for k, v in raw.items() if k != "nodes"}
    try:
        Pipeline.model_validate(
            {
                **top,
                "nodes": [n.model_dump() for n in nodes]
                or ([{"slug": "x", "plugin": "x"}] if raw_nodes else []),
            }
        )
    except ValidationError as exc:
        problems += _pydantic_problems(exc, "pipeline", _PIPELINE_KEYS)
    if raw_nodes is None:
        problems.append(Problem("pipeline", "field 'nodes': required (a list of nodes)"))
    elif not isinstance(raw_nodes, list):
        problems.append(Problem("pipeline", "field 'nodes': must be a list of nodes"))
    elif not raw_nodes:
        problems.append(Problem("pipeline", "field 'nodes': a pipeline needs at least one node"))
    pipeline = None
    if not problems:
        pipeline = Pipeline.model_validate({**top, "nodes": nodes})
    return pipeline, nodes, problems


def _graph_problems(nodes: list[Node]) -> list[Problem]:
    problems = []
    counts = Counter(n.slug for n in nodes)
    for slug, n in counts.items():
        if n > 1:
            problems.append(Problem(f"node {slug!r}", f"duplicate slug ({n} nodes use it)"))
    slugs = set(counts)
    for node in nodes:
        where = f"node {node.slug!r}"
        for dep in node.depends_on:
            if dep not in slugs:
                problems.append(
                    Problem(
                        where,
                        f"depends_on: unknown node {dep!r};"
                        f"{did_you_mean(dep, slugs) or ' no such slug'}",
                    )
                )
        if len(set(node.depends_on)) != len(node.depends_on):
            problems.append(Problem(where, "depends_on: lists a node twice"))
        for edge in node.edge_filters:
            if edge not in node.depends_on:
                problems.append(
                    Problem(
                        where,
                        f"edge_filters: {edge!r} is not in depends_on "
                        f"({', '.join(node.depends_on) or 'none'})",
                    )
                )
        for slug, edge_filter in node.edge_filters.items():
            for msg in check_edge_filter(edge_filter):
                problems.append(Problem(where, f"edge_filters.{slug}: {msg}"))
    unique = {n.slug: n.depends_on for n in nodes}
    cycle = Graph.from_edges(unique).find_cycle()
    if cycle:
        path = " -> ".join([*cycle, cycle[0]])
        problems.append(Problem("pipeline", f"cycle: {path} (a pipeline must be acyclic)"))
    return problems


def _binding_problems(node: Node) -> list[Problem]:
    where = f"node {node.slug!r}"
    namespaces = BUILTIN_NAMESPACES | set(node.depends_on)
    problems = []
    for param, binding in node.bindings.items():
        texts: list[tuple[str, str]] = []
        if isinstance(binding, ConditionalBinding):
            texts.append((f"bindings.{param}.when", binding.when))
            if isinstance(binding.value, str):
                texts.append((f"bindings.{param}.value", binding.value))
        elif isinstance(binding, str):
            texts.append((f"bindings.{param}", binding))
        for field, text in texts:
            try:
                template = parse_template(text)
            except ExpressionSyntaxError as exc:
                problems.append(Problem(where, f"{field}: {exc}"))
                continue
            for ns in sorted(template.namespaces() - namespaces):
                hint = did_you_mean(ns, namespaces)
                problems.append(
                    Problem(
                        where,
                        f"{field}: unknown namespace {ns!r};"
                        f"{hint or ' use a dependency slug, input, config, run or task'}",
                    )
                )
        if param in node.config:
            problems.append(
                Problem(where, f"parameter {param!r} is set in both config and bindings; keep one")
            )
    return problems


def _plugin_problems(node: Node, registry: Registry) -> list[Problem]:
    where = f"node {node.slug!r}"
    try:
        plugin = registry.get(node.plugin)
    except UnknownPlugin as exc:
        return [Problem(where, f"plugin: {exc}")]
    problems = []
    given = set(node.config) | set(node.bindings)
    if not plugin.accepts_any:
        for name in sorted(given - plugin.parameter_names):
            source = "bindings" if name in node.bindings else "config"
            hint = did_you_mean(name, plugin.parameter_names)
            problems.append(
                Problem(
                    where,
                    f"{source}.{name}: plugin {plugin.name!r} has no "
                    f"parameter {name!r};{hint or ' remove it'}",
                )
            )
    for name in sorted(plugin.required_parameters - given):
        problems.append(
            Problem(
                where,
                f"plugin {plugin.name!r} requires parameter {name!r}; set it in config or bindings",
            )
        )
    return problems


def _schedule_problems(pipeline: Pipeline) -> list[Problem]:
    """A schedule's cron must parse and its input must satisfy the run-input schema."""
    schedule = pipeline.schedule
    if schedule is None:
        return []
    from dagworker.clock import cron_problem  # celery.schedules, imported only when needed

    problems = []
    if schedule.cron is not None:
        problem = cron_problem(schedule.cron)
        if problem:
            problems.append(Problem("schedule", f"field 'cron': {problem}"))
    try:
        check_input(pipeline, schedule.input)
    except PipelineInvalid as exc:
        problems += [Problem("schedule", f"field 'input': {p}") for p in exc.problems]
    return problems


def check(
    raw: Mapping[str, Any] | Pipeline,
    registry: Registry,
    resolve: Callable[[str], Pipeline] | None = None,
) -> tuple[Pipeline | None, list[Problem]]:
    """Every problem of a pipeline; the Pipeline when there are none.

    ``resolve`` looks up registered pipelines (``name`` / ``name@version``) for nodes that run
    a sub-pipeline; without it such nodes are a problem.
    """
    pipeline, nodes, problems = parse(raw)
    problems += _graph_problems(nodes)
    for node in nodes:
        problems += _plugin_problems(node, registry)
        problems += _binding_problems(node)
    if pipeline is not None:
        problems += _schedule_problems(pipeline)
        if any(n.pipeline for n in pipeline.nodes):
            from dagworker.subpipeline import problems as subpipeline_problems

            problems += subpipeline_problems(pipeline, resolve)
    return (pipeline if not problems else None), problems


def validate(
    raw: Mapping[str, Any] | Pipeline,
    registry: Registry,
    resolve: Callable[[str], Pipeline] | None = None,
) -> Pipeline:
    """Return the validated Pipeline or raise PipelineInvalid listing every problem."""
    pipeline, problems = check(raw, registry, resolve)
    if problems or pipeline is None:
        name = raw.name if isinstance(raw, Pipeline) else raw.get("name")
        raise PipelineInvalid(problems, name if isinstance(name, str) else None)
    return pipeline


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_input(pipeline: Pipeline, run_input: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the run-input schema: defaults filled, required and types checked."""
    problems = []
    out = dict(run_input)
    for name, spec in pipeline.input.items():
        if name not in out:
            if spec.required:
                problems.append(
                    Problem(
                        f"input {name!r}",
                        f"required; pass it with --input {name}=... or in --input-file",
                    )
                )
            elif spec.default is not None:
                out[name] = spec.default
            continue
        problems += _type_problem(name, spec, out[name])
    if problems:
        raise PipelineInvalid(problems, pipeline.name)
    return out


def _type_problem(name: str, spec: InputField, value: Any) -> list[Problem]:
    if spec.type == "any":
        return []
    allowed = _JSON_TYPES[spec.type]
    is_bool = isinstance(value, bool)
    ok = isinstance(value, allowed) and (spec.type == "boolean" or not is_bool)
    if ok:
        return []
    return [
        Problem(f"input {name!r}", f"expected {spec.type}, got {type(value).__name__} {value!r}")
    ]
