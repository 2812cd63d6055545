"""Pipeline models (DESIGN §3) and loading from YAML, JSON or dicts.

User-written pipelines are strict: every model forbids unknown keys, so a typo is an error and
never a silently ignored setting. Cross-node checks (graph, plugins, bindings) live in
``validation``.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from dagworker.errors import PipelineLoadError

SLUG_PATTERN = r"^[a-z0-9_-]+$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, min_length=1, max_length=64)]
#: Event names: lower case, digits and ``_ . -`` (``order.created``), a letter or digit first.
EVENT_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
EventName = Annotated[str, StringConstraints(pattern=EVENT_PATTERN, min_length=1, max_length=128)]

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


class Cache(_Strict):
    """Reuse a previous task's outputs when plugin, version and inputs are the same."""

    ttl_s: float = Field(gt=0, le=366 * 86_400)


#: The built-in plugin a node runs when it names a ``pipeline`` instead of a plugin.
SUBPIPELINE_PLUGIN = "subpipeline"


class Node(_Strict):
    slug: Slug
    plugin: str = Field(min_length=1)
    #: A registered pipeline (``name`` or ``name@version``) run as a child run per task.
    pipeline: str | None = Field(default=None, min_length=1, max_length=200)
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
    #: Tasks per input (``ctx.repeat_index`` 0..N-1), e.g. several solver seeds.
    repeat: int = Field(default=1, ge=1, le=10_000)
    cache: Cache | None = None

    @model_validator(mode="before")
    @classmethod
    def _subpipeline(cls, data: Any) -> Any:
        """A node naming a ``pipeline`` runs the built-in ``subpipeline`` plugin."""
        if isinstance(data, dict) and data.get("pipeline") and not data.get("plugin"):
            return {**data, "plugin": SUBPIPELINE_PLUGIN}
        return data

    @model_validator(mode="after")
    def _plugin_or_pipeline(self) -> Node:
        if self.pipeline is not None and self.plugin != SUBPIPELINE_PLUGIN:
            raise ValueError("a node runs a plugin or a pipeline, not both: remove one")
        if self.pipeline is None and self.plugin == SUBPIPELINE_PLUGIN:
            raise ValueError("plugin 'subpipeline' needs 'pipeline: NAME[@VERSION]'")
        return self


class Triggers(_Strict):
    """Events that start a run of the registered pipeline (``dagworker fire EVENT``)."""

    events: list[EventName] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _unique(self) -> Triggers:
        if len(set(self.events)) != len(self.events):
            raise ValueError("triggers.events lists an event twice")
        return self


class Overlap(str, Enum):
    """What a schedule does when its previous run is still active."""

    SKIP = "skip"
    QUEUE = "queue"
    ALLOW = "allow"


class Schedule(_Strict):
    """Start a run of the registered pipeline by the clock (through ``celery beat``).

    Exactly one of ``cron`` (five fields, UTC) and ``every_s``. The cron text is checked by
    ``validation`` (through ``celery.schedules.crontab``, so this module stays free of Celery).
    """

    cron: str | None = Field(default=None, min_length=1, max_length=200)
    every_s: float | None = Field(default=None, ge=1, le=366 * 86_400)
    input: dict[str, Any] = Field(default_factory=dict)
    overlap: Overlap = Overlap.SKIP
    catch_up: bool = False

    @model_validator(mode="after")
    def _one_clock(self) -> Schedule:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("a schedule needs exactly one of 'cron' and 'every_s'")
        return self


class Pipeline(_Strict):
    name: Slug
    version: int | str | None = None
    description: str | None = None
    input: dict[str, InputField] = Field(default_factory=dict)
    nodes: list[Node] = Field(min_length=1)
    triggers: Triggers | None = None
    schedule: Schedule | None = None

    def node(self, slug: str) -> Node:
        for node in self.nodes:
            if node.slug == slug:
                return node
        raise KeyError(slug)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


def _shape(value: Any, depth_limit: int, count_limit: int) -> tuple[int, int]:
    """Nesting depth and number of values of a parsed document, stopping early past a limit.

    Also refuses NaN and infinities (not JSON: stored pipelines would silently turn them into
    null).
    """
    stack = [(value, 1)]
    deepest = count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if deepest > depth_limit or count > count_limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise PipelineLoadError(f"{item} is not a JSON number (NaN and infinities are refused)")
    return deepest, count


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice is an error, not "the last one wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PipelineLoadError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise PipelineLoadError(f"{name} is not JSON (NaN and infinities are refused)")


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last one,
    so a repeated ``depends_on`` or ``nodes`` would drop a setting without a word)."""


def _construct_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *base" then an explicit key legitimately overrides the merged one
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_document(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parse YAML or JSON text into a dict, refusing oversized, over-deep or non-object input."""
    size = len(text.encode())
    if size > MAX_PIPELINE_BYTES:
        raise PipelineLoadError(
            f"{source}: {size} bytes is over the {MAX_PIPELINE_BYTES}-byte limit"
        )
    try:
        # JSON is (almost) YAML, but json gives better errors for .json files.
        if text.lstrip().startswith("{"):
            data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
        else:
            data = yaml.load(text, Loader=_StrictYamlLoader)
    except json.JSONDecodeError as exc:
        raise PipelineLoadError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise PipelineLoadError(f"{source}: invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise PipelineLoadError(f"{source}: nesting too deep") from exc
    except PipelineLoadError as exc:
        raise PipelineLoadError(f"{source}: {exc}") from exc
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise PipelineLoadError(f"{source}: invalid value: {exc}") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise PipelineLoadError(f"{source}: a pipeline is a mapping at the top level, not {kind}")
    # Without YAML aliases a document cannot hold more values than it has bytes; with them a
    # few hundred bytes can stand for billions ("billion laughs") that every later step
    # (validation, storing the pipeline) would expand.
    try:
        depth, count = _shape(data, MAX_PIPELINE_DEPTH, size + 1)
    except PipelineLoadError as exc:
        raise PipelineLoadError(f"{source}: {exc}") from exc
    if depth > MAX_PIPELINE_DEPTH:
        raise PipelineLoadError(f"{source}: nesting deeper than {MAX_PIPELINE_DEPTH} levels")
    if count > size + 1:
        raise PipelineLoadError(
            f"{source}: YAML aliases expand to more values than the document has bytes "
            f"({size}); write the values out instead of repeating aliases"
        )
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
