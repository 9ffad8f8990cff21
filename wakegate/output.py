"""How the CLI prints objects, in kubectl's `-o` formats, and what `wait` and `get -w` need.

`-o json|yaml` print Knative-shaped objects (a `List` with `items` for many) with sorted
keys as kubectl does, `-o name` one `kind.group/name` per line, `-o jsonpath=TEMPLATE`
the template applied to the object or the List (no newline added, as kubectl).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from wakegate.jsonpath import JSONPathError, parse, render
from wakegate.serving.objects import full_name, items_of

FORMATS = ("table", "wide", "json", "yaml", "name", "jsonpath=TEMPLATE")


class OutputError(ValueError):
    """A bad `-o` value or template; the message is one line."""


@dataclass(frozen=True, slots=True)
class Output:
    kind: str
    """"table", "json", "yaml", "name" or "jsonpath"."""
    template: str = ""

    @property
    def objects(self) -> bool:
        """Whether it prints Knative-shaped objects (every format but the table)."""
        return self.kind != "table"


def parse_output(value: str) -> Output:
    """`-o` as kubectl takes it: json, yaml, name, wide, jsonpath=TEMPLATE."""
    value = value.removeprefix("=")
    if value in ("", "table", "wide"):
        return Output("table")
    if value in ("json", "yaml", "name"):
        return Output(value)
    kind, sep, template = value.partition("=")
    if kind == "jsonpath" and sep:
        try:
            parse(template)
        except JSONPathError as exc:
            raise OutputError(f"-o jsonpath: {exc}") from None
        return Output("jsonpath", template)
    raise OutputError(f"-o: got {value!r}, expected one of {', '.join(FORMATS)}")


def render_objects(output: Output, obj: Mapping[str, Any]) -> str:
    """An object (or a List) in the chosen format, ending in a newline except jsonpath."""
    if output.kind == "json":
        return json.dumps(obj, indent=4, sort_keys=True) + "\n"
    if output.kind == "yaml":
        return str(yaml.safe_dump(dict(obj), sort_keys=True))
    if output.kind == "name":
        return "".join(full_name(item) + "\n" for item in items_of(obj))
    try:
        return render(output.template, obj)
    except JSONPathError as exc:
        raise OutputError(f"-o jsonpath: {exc}") from None


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: str) -> float:
    """kubectl's `--timeout`: `60s`, `2m`, `1h30m`, or plain seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    match = _DURATION.match(value)
    if not value or match is None:
        raise ValueError(f"got {value!r}, expected a duration such as 60s, 2m or 1h")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True, slots=True)
class Condition:
    """`--for=condition=TYPE[=VALUE]`: a condition of that type with that status."""

    type: str
    status: str = "True"

    def met(self, obj: Mapping[str, Any]) -> bool:
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if str(condition.get("type", "")).lower() == self.type.lower():
                return str(condition.get("status", "")).lower() == self.status.lower()
        return False


def parse_condition(value: str) -> Condition:
    kind, sep, rest = value.partition("=")
    if kind != "condition" or not sep or not rest:
        raise ValueError(f"got {value!r}, expected condition=TYPE or condition=TYPE=STATUS")
    name, _, status = rest.partition("=")
    return Condition(name, status or "True")


def change_token(headers: list[str], row: list[Any]) -> tuple[str, ...]:
    """What makes a table row worth printing again under `get -w`: everything but AGE."""
    return tuple(str(c) for h, c in zip(headers, row, strict=True) if h != "AGE")
