"""Field readers for Knative objects given as plain dicts (YAML or JSON).

Each reader checks one value's shape and raises `ServiceError` with one line naming the
field path and what was expected, the form every Serving validation error takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from wakegate.ingress.kube_values import DNS_SUBDOMAIN
from wakegate.serving.model import EMPTY, StringMap

MAX_NAME = 63
"""Longest Kubernetes object name or DNS label."""


class ServiceError(ValueError):
    """A Service that cannot be accepted; the message is one line naming the field."""


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def fail(path: str, message: str) -> NoReturn:
    text = f"{path}: {message}" if path else message
    raise ServiceError(text.replace("\r", "\\r").replace("\n", "\\n"))


def shown(value: object) -> str:
    """A value as it appears in a message: strings quoted, containers by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def is_dns1035(name: str) -> bool:
    return len(name) <= MAX_NAME and bool(_DNS1035_LABEL.match(name))


def qualified_name_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return "the prefix before '/' must be a lowercase DNS subdomain"
    if not name or len(name) > MAX_NAME or not QUALIFIED_NAME.match(name):
        return (
            "expected a name of at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit, "
            "optionally prefixed by a DNS subdomain and '/'"
        )
    return None


def expect_object(value: object, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        fail(path, f"got {shown(value)}, expected an object")
    allowed = sorted(allowed)
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            fail(where, f"unknown field, expected one of {', '.join(allowed)}")
    return value


def expect_list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        fail(path, f"got {shown(value)}, expected a list")
    return value


def expect_string(value: object, path: str) -> str:
    if not isinstance(value, str):
        fail(path, f"got {shown(value)}, expected a string")
    return value


def expect_strings(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(expect_string(v, f"{path}[{i}]") for i, v in enumerate(expect_list(value, path)))


def expect_integer(value: object, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"got {shown(value)}, expected an integer")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f"at least {low}"
        fail(path, f"got {value}, expected {bounds}")
    return value


def expect_boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        fail(path, f"got {shown(value)}, expected true or false")
    return value


def expect_string_map(value: object, path: str, *, label_values: bool) -> StringMap:
    if value is None:
        return EMPTY
    if not isinstance(value, Mapping):
        fail(path, f"got {shown(value)}, expected an object of strings")
    items: dict[str, str] = {}
    for key, item in value.items():
        where = f"{path}[{key}]"
        if not isinstance(key, str):
            fail(where, f"got key {shown(key)}, expected a string key")
        problem = qualified_name_problem(key)
        if problem:
            fail(where, f"invalid key {shown(key)}, {problem}")
        if not isinstance(item, str):
            fail(where, f"got {shown(item)}, expected a string (quote it in YAML)")
        if label_values and item and (len(item) > MAX_NAME or not QUALIFIED_NAME.match(item)):
            fail(
                where,
                f"got {shown(item)}, expected a label value of at most 63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit",
            )
        items[key] = item
    return StringMap(items)
