"""kubectl's JSONPath templates (`-o jsonpath=TEMPLATE`) over JSON-like data.

The subset a Knative user types: text with `{…}` actions; paths of fields (`.status.url`,
`.metadata.labels.serving\\.knative\\.dev/service`, `$`/`@` for the current object), `*`,
`..` (recursive descent), indexes and slices (`[0]`, `[-1]`, `[1:3]`, `[::2]`), unions
(`[0,2]`, `['metadata.name','status.url']`), filters (`[?(@.type=="Ready")]` with
`== != < > <= >= =~`, and `[?(@.field)]` for presence), quoted literals (`{"\\n"}`) and
`{range …}…{end}`.

Output follows kubectl (client-go `util/jsonpath`): the results of one action are joined
by spaces, strings print bare, maps and lists as compact JSON with sorted keys, and a
missing field prints nothing (kubectl's default `--allow-missing-template-keys=true`);
an index out of range and syntax errors are errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class JSONPathError(ValueError):
    """The template does not parse, or cannot be applied; the message is one line."""


# --- syntax -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Wildcard:
    pass


@dataclass(frozen=True)
class _Recursive:
    pass


@dataclass(frozen=True)
class _Slice:
    start: int | None
    end: int | None
    step: int | None
    index: bool
    """A plain `[n]`: one element."""


@dataclass(frozen=True)
class _Union:
    branches: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class _Filter:
    left: tuple[Any, ...]
    op: str
    """"exists" for `[?(@.field)]`."""
    right: tuple[Any, ...] | None
    literal: Any = None


Path = tuple[Any, ...]
_OPERATORS = ("==", "!=", "<=", ">=", "=~", "<", ">")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    """Index of the bracket closing the one at `start`, skipping quoted strings."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise JSONPathError(f"unclosed {opening} in {text!r}")


def _unquote(text: str) -> str:
    out, i = [], 1
    while i < len(text) - 1:
        c = text[i]
        if c == "\\" and i + 1 < len(text) - 1:
            i += 1
            out.append(_ESCAPES.get(text[i], "\\" + text[i]))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise JSONPathError(f"{what}: got {text!r}, expected an integer") from None


def _bracket(content: str) -> Any:
    content = content.strip()
    if content == "*":
        return _Wildcard()
    if content.startswith("?(") and content.endswith(")"):
        return _filter(content[2:-1].strip())
    parts = _split_top(content, ",")
    if len(parts) > 1:
        return _Union(tuple(_branch(p.strip()) for p in parts))
    if _is_quoted(content):
        return _Union((_branch(content),))
    if ":" in content:
        bits = content.split(":")
        if len(bits) > 3:
            raise JSONPathError(f"[{content}]: expected [start:end:step]")
        start, end, *step = bits
        return _Slice(
            _int(start, "slice start"),
            _int(end, "slice end"),
            _int(step[0], "slice step") if step else None,
            index=False,
        )
    return _Slice(_int(content, "index"), None, None, index=True)


def _branch(text: str) -> Path:
    if _is_quoted(text):  # kubectl reads a quoted union member as a path
        return _path("." + _unquote(text))
    index = _int(text, "union")
    return (_Slice(index, None, None, index=True),)


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, quote, current = [], 0, "", []
    for c in text:
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    parts.append("".join(current))
    return parts


def _operand(text: str) -> tuple[Path | None, Any]:
    """A filter operand: a path (starting with @ or $) or a literal."""
    text = text.strip()
    if text.startswith(("@", "$")):
        return _path(text), None
    if _is_quoted(text):
        return None, _unquote(text)
    if text in ("true", "false"):
        return None, text == "true"
    number = _number(text)
    if number is None:
        raise JSONPathError(
            f"filter operand {text!r}: expected a path, a quoted string, a number, true or false"
        )
    return None, number


def _filter(text: str) -> _Filter:
    quote, i = "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        else:
            for op in _OPERATORS:
                if text.startswith(op, i):
                    rest = text[i + len(op) :]
                    if rest[:1] in "<>=":
                        raise JSONPathError(f"unrecognized filter operator {op}{rest[:1]}")
                    left, _ = _operand(text[:i])
                    right, literal = _operand(rest)
                    if left is None:
                        raise JSONPathError(f"filter {text!r}: the left side must be a path")
                    return _Filter(left, op, right, literal)
        i += 1
    left, _ = _operand(text)
    if left is None:
        raise JSONPathError(f"filter {text!r}: expected a path")
    return _Filter(left, "exists", None)


_NAME_END = re.compile(r"[.\[\s]")


def _path(text: str) -> Path:
    """A path expression: `$.a.b[0]`, `.a..b`, `@.x[*]`."""
    steps: list[Any] = []
    i = 0
    if text[:1] in ("$", "@"):
        i = 1
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("..", i):
            steps.append(_Recursive())
            i += 1  # the next "." (or "[") starts the step that follows
            while text.startswith("..", i):
                i += 1
        elif c == ".":
            i += 1
            name = []
            while i < len(text):
                if text[i] == "\\" and i + 1 < len(text):
                    name.append(text[i + 1])
                    i += 2
                    continue
                if _NAME_END.match(text[i]):
                    break
                name.append(text[i])
                i += 1
            word = "".join(name)
            if word == "*":
                steps.append(_Wildcard())
            elif word:
                steps.append(_Field(word))
        elif c == "[":
            end = _closing(text, i, "[", "]")
            steps.append(_bracket(text[i + 1 : end]))
            i = end + 1
        else:
            word = re.match(r"[^\s.\[]+", text[i:])
            raise JSONPathError(f"unrecognized identifier {word.group(0) if word else c}")
    return tuple(steps)


@dataclass(frozen=True)
class _Node:
    kind: str
    """"text", "path", "range" or "end"."""
    text: str = ""
    path: Path = ()


def parse(template: str) -> list[_Node]:
    nodes: list[_Node] = []
    i, text = 0, []
    while i < len(template):
        c = template[i]
        if c != "{":
            text.append(c)
            i += 1
            continue
        if text:
            nodes.append(_Node("text", "".join(text)))
            text = []
        end = _closing(template, i, "{", "}")
        action = template[i + 1 : end].strip()
        i = end + 1
        if action == "end":
            nodes.append(_Node("end"))
        elif action.startswith("range ") or action == "range":
            nodes.append(_Node("range", path=_path(action[5:].strip())))
        elif _is_quoted(action):
            nodes.append(_Node("text", _unquote(action)))
        elif action:
            nodes.append(_Node("path", path=_path(action)))
    if text:
        nodes.append(_Node("text", "".join(text)))
    return nodes


# --- evaluation ---------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _step(values: list[Any], step: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(step, _Field):
        for value in values:
            if isinstance(value, dict) and step.name in value:
                out.append(value[step.name])
        return out  # a missing field prints nothing
    if isinstance(step, _Wildcard):
        for value in values:
            if isinstance(value, dict):
                out.extend(value.values())
            elif isinstance(value, list):
                out.extend(value)
        return out
    if isinstance(step, _Recursive):
        return _descend(values)
    if isinstance(step, _Slice):
        for value in values:
            if value is None:
                continue
            if not isinstance(value, list):
                raise JSONPathError(f"{_kind(value)} is not array or slice")
            out.extend(_slice(value, step))
        return out
    if isinstance(step, _Union):
        for branch in step.branches:
            out.extend(_evaluate(values, branch))
        return out
    if isinstance(step, _Filter):
        for value in values:
            if value is None:
                continue
            if not isinstance(value, list):
                raise JSONPathError(f"{_kind(value)} is not array or slice and cannot be filtered")
            out.extend(item for item in value if _passes(item, step))
        return out
    raise JSONPathError(f"unexpected step {step!r}")


def _descend(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        children = (
            list(value.values())
            if isinstance(value, dict)
            else value
            if isinstance(value, list)
            else []
        )
        if children:
            out.append(value)
            out.extend(_descend(children))
    return out


def _slice(items: list[Any], step: _Slice) -> list[Any]:
    n = len(items)
    if step.index:
        index = step.start or 0
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise JSONPathError(f"array index out of bounds: index {step.start}, length {n}")
        return [items[index]]
    start = 0 if step.start is None else step.start
    end = n if step.end is None else step.end
    if start < 0:
        start += n
    if end < 0:
        end += n
    if start == end:
        return []
    if not 0 <= start < n:
        raise JSONPathError(f"array index out of bounds: index {start}, length {n}")
    if not 0 <= end <= n:
        raise JSONPathError(f"array index out of bounds: index {end - 1}, length {n}")
    if start > end:
        raise JSONPathError(f"starting index {start} is greater than ending index {end}")
    if step.step is not None and step.step <= 0:
        raise JSONPathError("step must be > 0")
    return items[start : end : step.step or 1]


def _passes(item: Any, step: _Filter) -> bool:
    lefts = _evaluate([item], step.left)
    if step.op == "exists":
        return bool(lefts)
    rights = _evaluate([item], step.right) if step.right is not None else [step.literal]
    if not lefts or not rights:
        return False
    if len(lefts) > 1 or len(rights) > 1:
        raise JSONPathError("can only compare one element at a time")
    left, right = lefts[0], rights[0]
    if step.op == "=~":
        if not isinstance(left, str) or not isinstance(right, str):
            raise JSONPathError("regexp search only supports strings")
        return re.search(right, left) is not None
    if step.op == "==":
        return _same(left, right)
    if step.op == "!=":
        return not _same(left, right)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    if not numeric and not (isinstance(left, str) and isinstance(right, str)):
        raise JSONPathError(f"cannot compare {_kind(left)} and {_kind(right)} with {step.op}")
    return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[step.op]


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return bool(left == right)


def _evaluate(values: list[Any], path: Path) -> list[Any]:
    for step in path:
        values = _step(values, step)
    return values


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, dict | list):
        text = json.dumps(
            _go_numbers(value), separators=(",", ":"), sort_keys=True, ensure_ascii=False
        )
        # Go's encoding/json escapes these three, and kubectl prints what it writes.
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return str(value)


def _go_numbers(value: Any) -> Any:
    """Whole floats as integers, as Go's encoding/json writes them (1.0 → 1)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value


def _run(nodes: Sequence[_Node], data: Any, out: list[str]) -> None:
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "path":
            out.append(" ".join(_text(v) for v in _evaluate([data], node.path)))
        elif node.kind == "end":
            raise JSONPathError("not in range, nothing to end")
        else:
            depth, j = 1, i + 1
            while j < len(nodes) and depth:
                depth += {"range": 1, "end": -1}.get(nodes[j].kind, 0)
                j += 1
            if depth:
                raise JSONPathError("range without end")
            for item in _evaluate([data], node.path):
                _run(nodes[i + 1 : j - 1], item, out)
            i = j
            continue
        i += 1


def render(template: str, data: Any) -> str:
    """The template applied to `data` (JSON-like: dicts, lists, scalars)."""
    out: list[str] = []
    _run(parse(template), data, out)
    return "".join(out)
