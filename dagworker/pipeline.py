"""Pipeline models (DESIGN §3) and loading from YAML, JSON or dicts.

User-written pipelines are strict: every model forbids unknown keys, so a typo is an error and
never a silently ignored setting. Cross-node checks (graph, plugins, bindings) live in
``validation``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dagworker.errors import PipelineLoadError

SLUG_PATTERN = r"^[a-z0-9_-]+$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, min_length=1, max_length=64)]

#: Files larger than this are refused before parsing (hostile input).
MAX_PIPELINE_BYTES = 1_000_000
#: Nesting deeper than this is refused (hostile input).
MAX_PIPELINE_DEPTH = 32


class FanMode(str, Enum):
    SINGLE = "single"
    AGGREGATE = "aggregate"
    GROUPED = "grouped"


class OnFailure(str, Enum):
    FAIL_RUN = "fail_run"
    CONTINUE = "continue"


FilterOp = Literal[
    "eq",
    "neq",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "not_exists",
    "matches",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputField(_Strict):
    """One field of the run-input schema."""

    type: Literal["string", "integer", "number", "boolean", "object", "array", "any"] = "any"
    required: bool = False
    default: Any = None
    description: str | None = None


class Rule(_Strict):
    """One edge-filter rule; the rules of an edge are ANDed."""

    field: str = Field(min_length=1)
    op: FilterOp
    value: Any = None


class Select(_Strict):
    """Keep the top ``limit`` artifacts by ``field`` after the rules (ties by artifact id)."""

    field: str = Field(min_length=1)
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(ge=1)


class EdgeFilter(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    select: Select | None = None


class ConditionalBinding(_Strict):
    """A binding that is omitted when ``when`` renders falsy."""

    value: Any
    when: str


Binding = ConditionalBinding | str | int | float | bool | None | list[Any] | dict[str, Any]


class Retry(_Strict):
    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0, le=86_400)
    max_backoff_s: float = Field(default=60.0, ge=0, le=86_400)
    jitter: bool = True


class Node(_Strict):
    slug: Slug
    plugin: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    fan_mode: FanMode = FanMode.SINGLE
    edge_filters: dict[str, EdgeFilter] = Field(default_factory=dict)
    bindings: dict[str, Binding] = Field(default_factory=dict)
    retry: Retry | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    queue: str | None = Field(default=None, min_length=1)
    on_failure: OnFailure = OnFailure.FAIL_RUN
    passthrough: bool = False


class Pipeline(_Strict):
    name: Slug
    version: int | str | None = None
    description: str | None = None
    input: dict[str, InputField] = Field(default_factory=dict)
    nodes: list[Node] = Field(min_length=1)

    def node(self, slug: str) -> Node:
        for node in self.nodes:
            if node.slug == slug:
                return node
        raise KeyError(slug)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed document, stopping early once past ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_document(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parse YAML or JSON text into a dict, refusing oversized, over-deep or non-object input."""
    if len(text.encode()) > MAX_PIPELINE_BYTES:
        raise PipelineLoadError(
            f"{source}: {len(text.encode())} bytes is over the {MAX_PIPELINE_BYTES}-byte limit"
        )
    try:
        # JSON is (almost) YAML, but json gives better errors for .json files.
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PipelineLoadError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise PipelineLoadError(f"{source}: invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise PipelineLoadError(f"{source}: nesting too deep") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise PipelineLoadError(f"{source}: a pipeline is a mapping at the top level, not {kind}")
    if _depth(data, MAX_PIPELINE_DEPTH) > MAX_PIPELINE_DEPTH:
        raise PipelineLoadError(f"{source}: nesting deeper than {MAX_PIPELINE_DEPTH} levels")
    return data


def read_pipeline_file(path: str | Path) -> dict[str, Any]:
    """Read a pipeline file (YAML or JSON) into a raw dict; validation happens separately."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise PipelineLoadError(f"{p}: cannot read: {exc.strerror}") from exc
    if size > MAX_PIPELINE_BYTES:
        raise PipelineLoadError(f"{p}: {size} bytes is over the {MAX_PIPELINE_BYTES}-byte limit")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineLoadError(f"{p}: not UTF-8 text") from exc
    return parse_document(text, str(p))
