"""The binding expression language (DESIGN §4.4): a tokenizer, a recursive-descent parser and a
tree-walking evaluator. No ``eval``, no attribute access: an expression can only read the scope
it is given and apply the pipes listed in ``PIPES``.

Templates
    Text with ``{expression}`` parts; ``{{`` and ``}}`` are literal braces. A template that is
    exactly one expression renders to that expression's typed JSON value (a number stays a
    number); otherwise each part is turned into text (strings as they are, null and missing as
    "", other values as compact JSON) and concatenated.

Expressions
    ``primary | pipe | pipe(arg, ...)``. A primary is a reference (``ns``, ``ns.key``,
    ``ns.list.0.key``), a literal (``'text'``, ``"text"``, ``12``, ``1.5``, ``true``, ``false``,
    ``null``) or ``list(expr, expr, ...)`` whose elements are expressions (pipes allowed).

Pipe arguments
    A quoted string, a number, ``true``/``false``/``null``, a reference written ``$ns.path``, or
    a bare word taken as text (``default(mp4)``), trimmed: quote it to keep spaces
    (``prepend('>> ')``). A pipe that takes at most one argument takes everything between its
    parentheses as that argument, commas included, so ``join(,)`` joins with a comma. Pipes with
    more arguments split bare text at commas.

References
    A dependency namespace holds the fields of this task's input artifacts from that
    dependency: ``dep.path`` is the value when there is one artifact, the list of the values
    present when there are several, and *missing* when there are none. Other namespaces are
    plain objects. A missing value renders as null; ``default`` replaces it, ``required`` fails
    on it, ``not`` treats it as false, ``length`` counts it as 0.

Bounds
    ``MAX_TEMPLATE_CHARS``, ``MAX_PIPES``, ``MAX_DEPTH``, ``MAX_STEPS`` per render and
    ``MAX_TEXT``/``MAX_ITEMS`` per value; a breach raises ExpressionError naming the limit.
    Regular expressions run on RE2 (linear time).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import re2

from dagworker.errors import ExpressionError, ExpressionEvalError, ExpressionSyntaxError
from dagworker.values import MISSING, compare, get_path, is_number, typed_equal, typed_in

MAX_TEMPLATE_CHARS = 4096
MAX_PIPES = 64
MAX_DEPTH = 16
MAX_STEPS = 10_000
MAX_TEXT = 1_000_000
MAX_ITEMS = 100_000


# -- AST ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    namespace: str
    path: str  # dotted, "" for the whole namespace


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class ListOf:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Pipe:
    name: str
    args: tuple[Ref | Literal, ...]
    position: int


@dataclass(frozen=True)
class Expr:
    primary: Ref | Literal | ListOf
    pipes: tuple[Pipe, ...]
    position: int


# -- pipes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipeSpec:
    func: Callable[..., Any]
    min_args: int = 0
    max_args: int | None = 0  # None: any number
    missing_ok: bool = False  # receives MISSING instead of short-circuiting to it
    regex_arg: bool = False


def _text(value: Any) -> str:
    if value is None or value is MISSING:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _mapped(func: Callable[[str], Any]) -> Callable[[Any], Any]:
    """A string pipe that maps over lists element by element."""

    def apply(value: Any) -> Any:
        if isinstance(value, list):
            return [func(_need_str(v)) for v in value]
        return func(_need_str(value))

    return apply


def _need_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ExpressionEvalError(f"expects text, got {_kind(value)}")
    return value


def _need_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ExpressionEvalError(f"expects a list, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is MISSING:
        return "a missing value"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if is_number(value):
        return "a number"
    names: dict[type, str] = {str: "text", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _path_of(value: str) -> str:
    return urlsplit(value).path if "://" in value else value


def _stem(value: str) -> str:
    base = posixpath.basename(_path_of(value))
    return posixpath.splitext(base)[0] if not base.startswith(".") or base.count(".") > 1 else base


def _to_int(value: Any) -> int:
    """Whole numbers; floats and numeric text are truncated toward zero."""
    if isinstance(value, bool):
        raise ExpressionEvalError("int: got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise ExpressionEvalError(f"int: {value[:40]!r} is not a number") from None
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return int(value)
    raise ExpressionEvalError(f"int: {_kind(value)} is not a number")


def _to_float(value: Any) -> float:
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ExpressionEvalError(f"float: {value[:40]!r} is not a number") from None
        if number == number and abs(number) != float("inf"):
            return number
    raise ExpressionEvalError(f"float: {_kind(value)} is not a number")


def _order(name: str, wanted: tuple[int, ...]) -> Callable[[Any, Any], bool]:
    def check(value: Any, bound: Any) -> bool:
        result = compare(value, bound)
        if result is None:
            raise ExpressionEvalError(
                f"{name}: compares numbers only, got {_kind(value)} and {_kind(bound)}"
            )
        return result in wanted

    return check


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is MISSING or value is None or value == "" else value


def _required(value: Any) -> Any:
    if value is MISSING or value is None:
        raise ExpressionEvalError("required: the value is missing")
    return value


def _pick(index: int) -> Callable[[Any], Any]:
    def pick(value: Any) -> Any:
        if isinstance(value, list | str):
            return value[index] if -len(value) <= index < len(value) else MISSING
        return value

    return pick


def _nth(value: Any, index: Any) -> Any:
    return _pick(_to_int(index))(value)


def _room(size: int) -> None:
    """Refuse to build a text longer than MAX_TEXT.

    The size of every value is checked after each pipe, but pipes that multiply their input
    (``replace`` with a long replacement, ``join`` with a long separator, ``pad`` to a huge
    width) would first build it: one expression could allocate gigabytes and stall a worker for
    seconds before the check ran. These pipes compute their result's size first.
    """
    if size > MAX_TEXT:
        raise ExpressionEvalError(f"a result longer than MAX_TEXT={MAX_TEXT} characters")


def _join(value: Any, sep: Any = "") -> str:
    parts = [_text(v) for v in _need_list(value)]
    glue = str(sep)
    _room(sum(map(len, parts)) + len(glue) * max(0, len(parts) - 1))
    return glue.join(parts)


def _replace(text: str, old: str, new: str) -> str:
    hits = text.count(old)  # "" matches len(text) + 1 times, as str.replace inserts it
    _room(len(text) + hits * (len(new) - len(old)))
    return text.replace(old, new)


def _split(value: Any, sep: Any = None) -> list[str]:
    return _need_str(value).split(sep if sep else None)


def _json_get(value: Any, path: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ExpressionEvalError("json_get: the value is not JSON text") from None
    return get_path(value, str(path), MISSING)


def _flatten(value: Any) -> list[Any]:
    out: list[Any] = []
    for item in _need_list(value):
        out.extend(item if isinstance(item, list) else [item])
    return out


def _compact(value: Any) -> list[Any]:
    return [v for v in _need_list(value) if v is not None and v != "" and v is not MISSING]


def _pad(value: Any, width: Any, char: Any = " ") -> str:
    fill = str(char)[:1] or " "
    width = _to_int(width)
    _room(width)
    return _text(value).rjust(width, fill)


def _truncate(value: Any, length: Any) -> Any:
    return _mapped(lambda s: s[: _to_int(length)])(value)


def _length(value: Any) -> int:
    if value is MISSING or value is None:
        return 0
    if isinstance(value, str | list | dict):
        return len(value)
    raise ExpressionEvalError(f"length: {_kind(value)} has no length")


def _match(value: Any, pattern: Any) -> bool:
    return isinstance(value, str) and _regex(str(pattern)).search(value) is not None


@lru_cache(maxsize=512)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern)


PIPES: Mapping[str, PipeSpec] = {
    "upper": PipeSpec(_mapped(str.upper)),
    "lower": PipeSpec(_mapped(str.lower)),
    "trim": PipeSpec(_mapped(str.strip)),
    "title": PipeSpec(_mapped(str.title)),
    "strip": PipeSpec(lambda v, chars=None: _mapped(lambda s: s.strip(chars))(v), 0, 1),
    "replace": PipeSpec(
        lambda v, old, new: _mapped(lambda s: _replace(s, str(old), str(new)))(v), 2, 2
    ),
    "default": PipeSpec(_default, 1, 1, missing_ok=True),
    "required": PipeSpec(_required, missing_ok=True),
    "first": PipeSpec(_pick(0)),
    "last": PipeSpec(_pick(-1)),
    "nth": PipeSpec(_nth, 1, 1),
    "join": PipeSpec(_join, 0, 1),
    "split": PipeSpec(_split, 0, 1),
    "basename": PipeSpec(_mapped(lambda s: posixpath.basename(_path_of(s)))),
    "dirname": PipeSpec(_mapped(lambda s: posixpath.dirname(_path_of(s)))),
    "stem": PipeSpec(_mapped(_stem)),
    "ext": PipeSpec(_mapped(lambda s: posixpath.splitext(_path_of(s))[1].lstrip("."))),
    "urlencode": PipeSpec(_mapped(lambda s: quote(s, safe=""))),
    "urldecode": PipeSpec(_mapped(unquote)),
    "int": PipeSpec(_to_int),
    "float": PipeSpec(_to_float),
    "string": PipeSpec(_text, missing_ok=True),
    "truncate": PipeSpec(_truncate, 1, 1),
    "prepend": PipeSpec(lambda v, s: _mapped(lambda x: str(s) + x)(v), 1, 1),
    "append": PipeSpec(lambda v, s: _mapped(lambda x: x + str(s))(v), 1, 1),
    "match": PipeSpec(_match, 1, 1, regex_arg=True),
    "json_get": PipeSpec(_json_get, 1, 1),
    "flatten": PipeSpec(_flatten),
    "compact": PipeSpec(_compact),
    "pad": PipeSpec(_pad, 1, 2),
    "not": PipeSpec(lambda v: not is_truthy(v), missing_ok=True),
    "eq": PipeSpec(lambda v, o: typed_equal(v, o), 1, 1, missing_ok=True),
    "neq": PipeSpec(lambda v, o: not typed_equal(v, o), 1, 1, missing_ok=True),
    "gt": PipeSpec(_order("gt", (1,)), 1, 1),
    "gte": PipeSpec(_order("gte", (0, 1)), 1, 1),
    "lt": PipeSpec(_order("lt", (-1,)), 1, 1),
    "lte": PipeSpec(_order("lte", (-1, 0)), 1, 1),
    "in": PipeSpec(lambda v, *options: typed_in(v, list(options)), 1, None, missing_ok=True),
    "length": PipeSpec(_length, missing_ok=True),
}


def is_truthy(value: Any) -> bool:
    """Falsy: missing, null, false, 0, 0.0, "", [] and {}."""
    if value is MISSING or value is None:
        return False
    return bool(value)


# -- parsing --------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over one template; ``pos`` indexes the template text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.pipes = 0

    def error(self, message: str, position: int | None = None) -> ExpressionSyntaxError:
        return ExpressionSyntaxError(message, self.text, self.pos if position is None else position)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self.peek() in (" ", "\t", "\n"):
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected {char!r}, found {found}")
        self.pos += 1

    def template(self) -> list[str | Expr]:
        parts: list[str | Expr] = []
        text: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if self.text.startswith("{{", self.pos) or self.text.startswith("}}", self.pos):
                text.append(char)
                self.pos += 2
            elif char == "{":
                if text:
                    parts.append("".join(text))
                    text = []
                self.pos += 1
                parts.append(self.expression(depth=0))
                self.expect("}")
            elif char == "}":
                raise self.error("unmatched '}' (write '}}' for a literal brace)")
            else:
                text.append(char)
                self.pos += 1
        if text:
            parts.append("".join(text))
        return parts

    def expression(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than MAX_DEPTH={MAX_DEPTH}")
        self.skip_space()
        start = self.pos
        primary = self.primary(depth)
        pipes = []
        while True:
            self.skip_space()
            if self.peek() != "|":
                break
            self.pos += 1
            pipes.append(self.pipe())
        return Expr(primary, tuple(pipes), start)

    def identifier(self) -> str:
        self.skip_space()
        start = self.pos
        while self.peek() and (self.peek().isalnum() or self.peek() in "_-"):
            self.pos += 1
        if start == self.pos:
            found = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected a name, found {found}")
        return self.text[start : self.pos]

    def primary(self, depth: int) -> Ref | Literal | ListOf:
        char = self.peek()
        if char in ("'", '"'):
            return Literal(self.quoted())
        if char.isdigit() or (char == "-" and self.text[self.pos + 1 : self.pos + 2].isdigit()):
            return Literal(self.number())
        name = self.identifier()
        if name in ("true", "false", "null"):
            return Literal({"true": True, "false": False, "null": None}[name])
        if name == "list" and self.peek() == "(":
            self.pos += 1
            items = [self.expression(depth + 1)]
            self.skip_space()
            while self.peek() == ",":
                self.pos += 1
                items.append(self.expression(depth + 1))
                self.skip_space()
            self.expect(")")
            return ListOf(tuple(items))
        return self.reference(name)

    def reference(self, namespace: str) -> Ref:
        segments = []
        while self.peek() == ".":
            self.pos += 1
            start = self.pos
            while self.peek() and (self.peek().isalnum() or self.peek() in "_-"):
                self.pos += 1
            if start == self.pos:
                raise self.error("expected a field name after '.'")
            segments.append(self.text[start : self.pos])
        return Ref(namespace, ".".join(segments))

    def quoted(self) -> str:
        quote_char = self.text[self.pos]
        start = self.pos
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                escaped = self.text[self.pos + 1]
                out.append({"n": "\n", "t": "\t"}.get(escaped, escaped))
                self.pos += 2
            elif char == quote_char:
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1
        raise self.error("unclosed string", start)

    def number(self) -> int | float:
        start = self.pos
        if self.peek() == "-":
            self.pos += 1
        while self.peek() and (self.peek().isdigit() or self.peek() in ".eE+-"):
            self.pos += 1
        raw = self.text[start : self.pos]
        try:
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            raise self.error(f"bad number {raw!r}", start) from None

    def pipe(self) -> Pipe:
        self.pipes += 1
        if self.pipes > MAX_PIPES:
            raise self.error(f"more than MAX_PIPES={MAX_PIPES} pipes")
        self.skip_space()
        start = self.pos
        name = self.identifier()
        spec = PIPES.get(name)
        if spec is None:
            from dagworker.errors import did_you_mean

            raise self.error(f"unknown pipe {name!r};{did_you_mean(name, PIPES) or ''}", start)
        args: tuple[Ref | Literal, ...] = ()
        if self.peek() == "(":
            args = self.arguments(spec)
        count = len(args)
        if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
            wanted = (
                f"{spec.min_args}"
                if spec.max_args == spec.min_args
                else f"{spec.min_args} to {spec.max_args if spec.max_args is not None else 'any'}"
            )
            raise self.error(f"pipe {name!r} takes {wanted} argument(s), got {count}", start)
        if spec.regex_arg and args and isinstance(args[0], Literal):
            try:
                _regex(str(args[0].value))
            except Exception as exc:  # re2.error
                raise self.error(
                    f"pipe {name!r}: invalid regular expression: {exc}", start
                ) from None
        return Pipe(name, args, start)

    def arguments(self, spec: PipeSpec) -> tuple[Ref | Literal, ...]:
        """Raw argument text up to the matching ')' (quotes respected), then split."""
        self.pos += 1
        start = self.pos
        quote_char = ""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if quote_char:
                if char == "\\":
                    self.pos += 1
                elif char == quote_char:
                    quote_char = ""
            elif char in ("'", '"'):
                quote_char = char
            elif char == ")":
                break
            elif char in "{}":
                raise self.error(f"{char!r} inside pipe arguments")
            self.pos += 1
        else:
            raise self.error("unclosed '(' of pipe arguments", start - 1)
        raw = self.text[start : self.pos]
        self.pos += 1
        if not raw.strip():
            return ()
        pieces = [raw] if spec.max_args == 1 else _split_args(raw)
        return tuple(self.argument(piece, start) for piece in pieces)

    def argument(self, raw: str, position: int) -> Ref | Literal:
        text = raw.strip() if raw.strip() else raw
        if len(text) >= 2 and text[0] == text[-1] and text[0] in ("'", '"'):
            return Literal(_Parser(text).quoted())
        if text.startswith("$"):
            sub = _Parser(text[1:])
            ref = sub.reference(sub.identifier())
            if sub.pos != len(sub.text):
                raise self.error(f"bad reference argument {text!r}", position)
            return ref
        if text in ("true", "false", "null"):
            return Literal({"true": True, "false": False, "null": None}[text])
        try:
            return Literal(int(text))
        except ValueError:
            pass
        try:
            number = float(text)
            if number == number and abs(number) != float("inf"):
                return Literal(number)
        except ValueError:
            pass
        return Literal(text)


def _split_args(raw: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quote_char = ""
    for char in raw:
        if quote_char:
            if char == quote_char:
                quote_char = ""
        elif char in ("'", '"'):
            quote_char = char
        elif char == ",":
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


# -- evaluation -----------------------------------------------------------------------------------


class _Evaluator:
    def __init__(self, source: str, scope: Mapping[str, Any]) -> None:
        self.source = source
        self.scope = scope
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ExpressionEvalError(
                f"more than MAX_STEPS={MAX_STEPS} evaluation steps", self.source
            )

    def expr(self, node: Expr) -> Any:
        value = self.primary(node.primary)
        for pipe in node.pipes:
            self.step()
            spec = PIPES[pipe.name]
            if value is MISSING and not spec.missing_ok:
                continue  # missing flows through to default/required
            args = [self.primary(a) for a in pipe.args]
            try:
                value = spec.func(value, *args)
            except ExpressionEvalError as exc:
                raise ExpressionEvalError(
                    f"pipe {pipe.name!r}: {exc.args[0]}", self.source, pipe.position
                ) from None
            except (TypeError, ValueError, IndexError) as exc:
                raise ExpressionEvalError(
                    f"pipe {pipe.name!r} cannot take {_kind(value)}: {exc}",
                    self.source,
                    pipe.position,
                ) from None
            _check_size(value, self.source)
        return value

    def primary(self, node: Ref | Literal | ListOf) -> Any:
        self.step()
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, ListOf):
            items = [self.expr(item) for item in node.items]
            return [None if v is MISSING else v for v in items]
        return self.reference(node)

    def reference(self, ref: Ref) -> Any:
        if ref.namespace not in self.scope:
            raise ExpressionEvalError(f"unknown namespace {ref.namespace!r}", self.source)
        base = self.scope[ref.namespace]
        if isinstance(base, list):  # a dependency: the task's input artifacts
            values = [a if not ref.path else get_path(a, ref.path, MISSING) for a in base]
            present = [v for v in values if v is not MISSING]
            if len(base) == 1:
                return values[0]
            return present if present else MISSING
        return base if not ref.path else get_path(base, ref.path, MISSING)


def _check_size(value: Any, source: str) -> None:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ExpressionEvalError(f"a value longer than MAX_TEXT={MAX_TEXT} characters", source)
    if isinstance(value, list) and len(value) > MAX_ITEMS:
        raise ExpressionEvalError(f"a list longer than MAX_ITEMS={MAX_ITEMS} items", source)


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[str | Expr, ...]

    @property
    def is_single_expression(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], Expr)

    def references(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []

        def walk(node: Expr | Ref | Literal | ListOf) -> None:
            if isinstance(node, Expr):
                walk(node.primary)
                for pipe in node.pipes:
                    for arg in pipe.args:
                        walk(arg)
            elif isinstance(node, Ref):
                out.append((node.namespace, node.path))
            elif isinstance(node, ListOf):
                for item in node.items:
                    walk(item)

        for part in self.parts:
            if isinstance(part, Expr):
                walk(part)
        return out

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self.references()}

    def render(self, scope: Mapping[str, Any]) -> Any:
        evaluator = _Evaluator(self.source, scope)
        if self.is_single_expression:
            value = evaluator.expr(self.parts[0])  # type: ignore[arg-type]
            return None if value is MISSING else value
        out = []
        size = 0
        for part in self.parts:
            text = part if isinstance(part, str) else _text(evaluator.expr(part))
            size += len(text)
            if size > MAX_TEXT:
                raise ExpressionEvalError(
                    f"a result longer than MAX_TEXT={MAX_TEXT} characters", self.source
                )
            out.append(text)
        return "".join(out)


@lru_cache(maxsize=2048)
def parse_template(text: str) -> Template:
    """Parse once (cached); raises ExpressionSyntaxError with the position of the problem."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ExpressionSyntaxError(
            f"template longer than MAX_TEMPLATE_CHARS={MAX_TEMPLATE_CHARS}", text[:60] + "..."
        )
    try:
        parts = _Parser(text).template()
    except ExpressionError:
        raise
    except RecursionError:
        raise ExpressionSyntaxError("nesting too deep", text) from None
    return Template(text, tuple(parts))
