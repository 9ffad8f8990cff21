"""Knative's ConfigMaps: the object, and its `data` values read as Knative reads them.

Knative configures its components with ConfigMaps in `knative-serving` whose `data` is
a flat string → string map; each component parses the keys it knows
(`knative.dev/pkg/configmap`: AsBool, AsInt64, AsFloat64, AsDuration, …) and ignores the
rest, as well as the `_example` key that documents the defaults. `DataReader` does the
same, with errors of one line naming the ConfigMap, the key and what was expected, and a
list of the keys nothing read (so a caller can warn about them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wakegate.ingress.kube_values import parse_go_duration

API_VERSION = "v1"
KIND = "ConfigMap"
NAMESPACE = "knative-serving"
EXAMPLE_KEY = "_example"

_INTEGER = re.compile(r"^[+-]?\d+$")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class ConfigError(ValueError):
    """A ConfigMap that cannot be accepted; the message is one line naming the key."""


def _shown(value: object) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


@dataclass(frozen=True, slots=True)
class ConfigMap:
    """A `v1/ConfigMap` reduced to what configuration reads."""

    namespace: str
    name: str
    data: Mapping[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "data": dict(self.data),
        }


_META_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
    }
)


def parse_configmap(obj: Mapping[str, Any]) -> ConfigMap:
    """Validate the shape of a ConfigMap object; `data` values must be strings."""
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise ConfigError(
            f"apiVersion/kind: got {obj.get('apiVersion')}/{obj.get('kind')}, expected v1/ConfigMap"
        )
    for key in obj:
        if key not in ("apiVersion", "kind", "metadata", "data", "binaryData", "immutable"):
            raise ConfigError(f"{key}: unknown field, expected apiVersion, kind, metadata, data")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise ConfigError("metadata: missing required field")
    for key in meta:
        if key not in _META_FIELDS:
            raise ConfigError(f"metadata.{key}: unknown field")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("metadata.name: missing required field")
    namespace = meta.get("namespace", NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"{name}: metadata.namespace: expected a string")
    raw = obj.get("data") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: data: expected an object of strings")
    data: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{name}: data: got key {_shown(key)}, expected a string key")
        if not isinstance(value, str):
            raise ConfigError(
                f"{name}: data[{key}]: got {_shown(value)}, expected a string (quote it in YAML)"
            )
        data[key] = value
    if obj.get("binaryData"):
        raise ConfigError(f"{name}: binaryData: not read by Knative, put the values in data")
    return ConfigMap(namespace=namespace, name=name, data=data)


class DataReader:
    """Typed reads of one ConfigMap's `data`, remembering which keys were read."""

    def __init__(self, name: str, data: Mapping[str, str]) -> None:
        self.name = name
        self.data = data
        self._read: set[str] = {EXAMPLE_KEY}

    def fail(self, key: str, got: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.name}: {key}: got {_shown(got)}, expected {expected}")

    def raw(self, *keys: str) -> tuple[str, str] | None:
        """(key, value) of the last of `keys` present (legacy names first, current last,
        so the current name wins as in Knative), or None."""
        found = None
        for key in keys:
            self._read.add(key)
            if key in self.data:
                found = (key, self.data[key])
        return found

    def string(self, default: str, *keys: str) -> str:
        found = self.raw(*keys)
        return default if found is None else found[1]

    def boolean(self, default: bool, *keys: str) -> bool:
        found = self.raw(*keys)
        if found is None:
            return default
        key, text = found
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self.fail(key, text, "true or false")

    def integer(
        self, default: int, *keys: str, low: int | None = None, high: int | None = None
    ) -> int:
        found = self.raw(*keys)
        if found is None:
            return default
        key, text = found
        if not _INTEGER.match(text.strip()):
            raise self.fail(key, text, f"an integer{_bounds(low, high)}")
        value = int(text)
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, text, f"an integer{_bounds(low, high)}")
        return value

    def number(
        self, default: float, *keys: str, low: float | None = None, high: float | None = None
    ) -> float:
        found = self.raw(*keys)
        if found is None:
            return default
        key, text = found
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (
            (low is not None and value < low) or (high is not None and value > high)
        ):
            raise self.fail(key, text, f"a number{_bounds(low, high)}")
        return value

    def duration(
        self, default: float, *keys: str, low: float | None = None, high: float | None = None
    ) -> float:
        """A Go duration (`60s`, `1m30s`, `0s`) in seconds."""
        found = self.raw(*keys)
        if found is None:
            return default
        key, text = found
        seconds = parse_go_duration(text.strip())
        if (
            seconds is None
            or (low is not None and seconds < low)
            or (high is not None and seconds > high)
        ):
            raise self.fail(key, text, f"a duration such as 30s or 2m{_bounds(low, high, True)}")
        return seconds

    def choice(self, default: str, choices: Iterable[str], *keys: str) -> str:
        """One of `choices`, compared case-insensitively; returned as spelled in `choices`."""
        found = self.raw(*keys)
        if found is None:
            return default
        key, text = found
        options = list(choices)
        for option in options:
            if text.strip().lower() == option.lower():
                return option
        raise self.fail(key, text, "one of " + ", ".join(options))

    def unread(self) -> list[str]:
        """The keys of `data` nothing read: unknown to Knative, or misspelt."""
        return sorted(key for key in self.data if key not in self._read)


def _bounds(low: float | None, high: float | None, seconds: bool = False) -> str:
    unit = "s" if seconds else ""

    def shown(value: float) -> str:
        return f"{value:g}{unit}"

    if low is not None and high is not None:
        return f" in {shown(low)}..{shown(high)}"
    if low is not None:
        return f" >= {shown(low)}"
    if high is not None:
        return f" <= {shown(high)}"
    return ""
