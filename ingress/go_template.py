"""The part of Go's `text/template` that Knative's domain and tag templates use.

`config-network`'s `domain-template` and `tag-template` are Go templates over a few
values (`{{.Name}}.{{.Namespace}}.{{.Domain}}`, `{{.Tag}}-{{.Name}}`, and
`{{index .Annotations "key"}}`). This module parses exactly those actions: text, a field
reference `.Field`, and `index .Map "key"` (a missing key gives "", as Go's does for a
map). Anything else is refused when the template is parsed, naming what was not
understood, so a template is never accepted that later renders differently than in
Knative.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

_FIELD = re.compile(r"^\.([A-Za-z_][A-Za-z0-9_]*)$")
_INDEX = re.compile(r'^index\s+\.([A-Za-z_][A-Za-z0-9_]*)\s+("(?:[^"\\]|\\.)*")$')


class TemplateError(ValueError):
    """A template outside the supported subset, or naming an unknown field."""


@dataclass(frozen=True, slots=True)
class _Field:
    name: str


@dataclass(frozen=True, slots=True)
class _Index:
    name: str
    key: str


_Part = str | _Field | _Index


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[_Part, ...]

    def render(self, values: Mapping[str, str | Mapping[str, str]]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, _Field):
                value = values.get(part.name, "")
                out.append(value if isinstance(value, str) else "")
            else:
                found = values.get(part.name) or {}
                out.append(found.get(part.key, "") if isinstance(found, Mapping) else "")
        return "".join(out)


def parse_template(source: str, fields: Collection[str], maps: Collection[str] = ()) -> Template:
    """Parse `source`; `fields` are the string values it may name, `maps` the maps it may
    `index`."""
    parts: list[_Part] = []
    pos = 0
    while True:
        start = source.find("{{", pos)
        if start < 0:
            if "}}" in source[pos:]:
                raise TemplateError(f"unexpected '}}}}' at offset {source.index('}}', pos)}")
            if source[pos:]:
                parts.append(source[pos:])
            break
        if source[pos:start]:
            if "}}" in source[pos:start]:
                raise TemplateError(f"unexpected '}}}}' at offset {source.index('}}', pos)}")
            parts.append(source[pos:start])
        end = source.find("}}", start + 2)
        if end < 0:
            raise TemplateError(f"unclosed action at offset {start}")
        action = source[start + 2 : end].strip()
        parts.append(_action(action, fields, maps))
        pos = end + 2
    return Template(source, tuple(parts))


def _action(action: str, fields: Collection[str], maps: Collection[str]) -> _Part:
    match = _FIELD.match(action)
    if match:
        name = match.group(1)
        if name not in fields:
            known = ", ".join(f".{f}" for f in sorted(fields))
            raise TemplateError(f"{{{{{action}}}}}: unknown field .{name}, expected one of {known}")
        return _Field(name)
    match = _INDEX.match(action)
    if match:
        name = match.group(1)
        if name not in maps:
            known = ", ".join(f".{m}" for m in sorted(maps)) or "none"
            raise TemplateError(f"{{{{{action}}}}}: cannot index .{name}, expected {known}")
        return _Index(name, json.loads(match.group(2)))
    raise TemplateError(
        f"{{{{{action}}}}}: unsupported action, expected {{{{.Field}}}} "
        '(or {{index .Annotations "key"}})'
    )
