"""Knative `serving.knative.dev/v1` Service: the model, its defaults and its validation.

The input is a plain dict as loaded from YAML or JSON. Validation follows Knative's
webhook (`service_validation.go`, `revision_validation.go`, `route_validation.go`,
`k8s_validation.go`, `autoscaling/annotation_validation.go`) and its defaulting
(`*_defaults.go`), applied before the values are stored, so two manifests that mean the
same thing give equal models. Fields outside the modelled subset are rejected rather than
silently ignored. Every error is one `ServiceError` whose message is a single line that
names the field path and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import yaml

from wakegate.ingress.kube_values import DNS_SUBDOMAIN, HEADER_NAME, parse_go_duration

API_VERSION = "serving.knative.dev/v1"
KIND = "Service"

VISIBILITY_LABEL = "networking.knative.dev/visibility"
CLUSTER_LOCAL = "cluster-local"
DEFAULT_CONTAINER_NAME = "user-container"
DEFAULT_CONTAINER_PORT = 8080
AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"

_SERVING_PREFIX = "serving.knative.dev/"
_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
_RESERVED_PORTS = frozenset({8008, 8012, 8013, 8022, 9090, 9091})
_PORT_NAMES = ("", "http1", "h2c")
_MAX_NAME = 63


class ServiceError(ValueError):
    """A Service that cannot be accepted; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Knative's `config-defaults` (and the one `config-autoscaler` key validation needs)."""

    revision_timeout_s: int = 300
    max_revision_timeout_s: int = 600
    container_concurrency: int = 0
    container_concurrency_max: int = 1000
    allow_zero_initial_scale: bool = False


SERVING_CONFIG = ServingConfig()
"""Used when a caller passes no config; replace it to change the process-wide defaults."""


def admitted(config: ServingConfig | None = None) -> ServingConfig:
    """`config` for reading back objects that were validated when they were applied.

    A zero initial scale accepted while `allow_zero_initial_scale` was on stays readable
    once it is off; as in Knative, such a revision then runs at the global initial scale
    (see `RevisionScaling.from_spec`), and only a new apply is refused.
    """
    return replace(config or SERVING_CONFIG, allow_zero_initial_scale=True)


class StringMap(Mapping[str, str]):
    """An immutable, hashable str → str mapping (labels, annotations), keys sorted."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._items = dict(sorted(dict(items).items()))

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"StringMap({self._items!r})"


EMPTY = StringMap()


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int = DEFAULT_CONTAINER_PORT
    name: str = ""
    """"", "http1" or "h2c"; h2c makes the gateway speak HTTP/2 cleartext upstream."""

    @property
    def http2(self) -> bool:
        return self.name == "h2c"


@dataclass(frozen=True, slots=True)
class HTTPGetProbe:
    path: str = "/"
    port: int | str | None = None
    """None (or the container port, by number or name) probes the serving port."""
    http_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TCPSocketProbe:
    port: int | str | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """A readiness probe. Knative defaults it to a TCP probe of the serving port."""

    http_get: HTTPGetProbe | None = None
    tcp_socket: TCPSocketProbe | None = None
    initial_delay_s: int = 0
    period_s: int = 0
    """0 is Knative's aggressive probing: retry quickly until the first success."""
    timeout_s: int = 0
    success_threshold: int = 1
    failure_threshold: int = 0


DEFAULT_PROBE = Probe(tcp_socket=TCPSocketProbe())


@dataclass(frozen=True, slots=True)
class Container:
    name: str = DEFAULT_CONTAINER_NAME
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    port: ContainerPort = ContainerPort()
    readiness_probe: Probe = DEFAULT_PROBE
    working_dir: str = ""


@dataclass(frozen=True, slots=True)
class RevisionTemplate:
    """`spec.template`, defaulted. Equal templates mean no new Revision."""

    container: Container
    name: str = ""
    """`template.metadata.name`; empty means the Revision name is generated."""
    labels: StringMap = EMPTY
    annotations: StringMap = EMPTY
    container_concurrency: int = 0
    """Hard limit of in-flight requests per pod; 0 is unlimited."""
    timeout_seconds: int = 300


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    percent: int
    revision_name: str = ""
    latest_revision: bool = False
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    template: RevisionTemplate
    traffic: tuple[TrafficTarget, ...] = (TrafficTarget(percent=100, latest_revision=True),)
    """Never empty: an omitted `spec.traffic` is 100 % to the latest ready revision."""
    labels: StringMap = EMPTY
    annotations: StringMap = EMPTY

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cluster_local(self) -> bool:
        return self.labels.get(VISIBILITY_LABEL) == CLUSTER_LOCAL


# --- scalar checks -------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def _fail(path: str, message: str) -> NoReturn:
    text = f"{path}: {message}" if path else message
    raise ServiceError(text.replace("\r", "\\r").replace("\n", "\\n"))


def _shown(value: object) -> str:
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


def _is_dns1035(name: str) -> bool:
    return len(name) <= _MAX_NAME and bool(_DNS1035_LABEL.match(name))


def _qualified_name_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return "the prefix before '/' must be a lowercase DNS subdomain"
    if not name or len(name) > _MAX_NAME or not _QUALIFIED_NAME.match(name):
        return (
            "expected a name of at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit, "
            "optionally prefixed by a DNS subdomain and '/'"
        )
    return None


def child_name(parent: str, suffix: str) -> str:
    """`parent + suffix`, shortened with a hash of `parent` to fit a 63-character name."""
    if len(parent) + len(suffix) <= _MAX_NAME:
        return parent + suffix
    digest = hashlib.md5(parent.encode(), usedforsecurity=False).hexdigest()
    return parent[: _MAX_NAME - len(digest) - len(suffix)] + digest + suffix


# --- structural readers --------------------------------------------------------------


def _object(value: object, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"got {_shown(value)}, expected an object")
    allowed = sorted(allowed)
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            _fail(where, f"unknown field, expected one of {', '.join(allowed)}")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, f"got {_shown(value)}, expected a list")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"got {_shown(value)}, expected a string")
    return value


def _strings(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(_string(v, f"{path}[{i}]") for i, v in enumerate(_list(value, path)))


def _integer(value: object, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"got {_shown(value)}, expected an integer")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f"at least {low}"
        _fail(path, f"got {value}, expected {bounds}")
    return value


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"got {_shown(value)}, expected true or false")
    return value


def _string_map(value: object, path: str, *, label_values: bool) -> StringMap:
    if value is None:
        return EMPTY
    if not isinstance(value, Mapping):
        _fail(path, f"got {_shown(value)}, expected an object of strings")
    items: dict[str, str] = {}
    for key, item in value.items():
        where = f"{path}[{key}]"
        if not isinstance(key, str):
            _fail(where, f"got key {_shown(key)}, expected a string key")
        problem = _qualified_name_problem(key)
        if problem:
            _fail(where, f"invalid key {_shown(key)}, {problem}")
        if not isinstance(item, str):
            _fail(where, f"got {_shown(item)}, expected a string (quote it in YAML)")
        if label_values and item and (len(item) > _MAX_NAME or not _QUALIFIED_NAME.match(item)):
            _fail(
                where,
                f"got {_shown(item)}, expected a label value of at most 63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit",
            )
        items[key] = item
    return StringMap(items)


# --- autoscaling annotations ---------------------------------------------------------

AUTOSCALING_ANNOTATIONS: dict[str, tuple[str, ...]] = {
    "class": ("class",),
    "metric": ("metric",),
    "target": ("target",),
    "target-utilization-percentage": (
        "target-utilization-percentage",
        "targetUtilizationPercentage",
    ),
    "window": ("window",),
    "panic-window-percentage": ("panic-window-percentage", "panicWindowPercentage"),
    "panic-threshold-percentage": ("panic-threshold-percentage", "panicThresholdPercentage"),
    "min-scale": ("min-scale", "minScale"),
    "max-scale": ("max-scale", "maxScale"),
    "initial-scale": ("initial-scale", "initialScale"),
    "target-burst-capacity": ("target-burst-capacity", "targetBurstCapacity"),
}
"""Supported setting → its annotation names under `autoscaling.knative.dev/`, current first."""

_ALIASES = {alias: setting for setting, names in AUTOSCALING_ANNOTATIONS.items() for alias in names}


def _float_setting(text: str, path: str, expected: str) -> float:
    if not _DECIMAL.match(text):
        _fail(path, f"got {_shown(text)}, expected {expected}")
    return float(text)


def _int_setting(text: str, path: str) -> int:
    if not _INTEGER.match(text) or not 0 <= int(text) <= 2**31 - 1:
        _fail(path, f"got {_shown(text)}, expected a non-negative integer")
    return int(text)


def autoscaling_settings(
    annotations: Mapping[str, str],
    path: str = "spec.template.metadata.annotations",
    config: ServingConfig | None = None,
) -> dict[str, float | int | str]:
    """Validate the `autoscaling.knative.dev/*` annotations; return the values set.

    Keys of the result are the setting names of `AUTOSCALING_ANNOTATIONS`; durations
    are in seconds. Unknown keys under the autoscaling prefix are rejected, since a
    setting that is silently ignored is worse than an error.
    """
    config = config or SERVING_CONFIG
    found: dict[str, tuple[str, str]] = {}
    for key, text in annotations.items():
        if not key.startswith(AUTOSCALING_PREFIX):
            continue
        where = f"{path}[{key}]"
        setting = _ALIASES.get(key.removeprefix(AUTOSCALING_PREFIX))
        if setting is None:
            supported = ", ".join(AUTOSCALING_ANNOTATIONS)
            _fail(where, f"unknown autoscaling annotation, expected one of {supported}")
        if setting in found:
            _fail(where, f"conflicts with {found[setting][0]}, set only one of them")
        found[setting] = (key, text)

    out: dict[str, float | int | str] = {}
    for setting, (key, text) in found.items():
        where = f"{path}[{key}]"
        if setting == "class":
            if text != KPA_CLASS:
                _fail(where, f"got {_shown(text)}, expected {KPA_CLASS}")
            out[setting] = text
        elif setting == "metric":
            if text != "concurrency":
                _fail(where, f'got {_shown(text)}, expected "concurrency"')
            out[setting] = text
        elif setting == "target":
            value = _float_setting(text, where, "a number >= 0.01")
            if value < 0.01:
                _fail(where, f"got {_shown(text)}, expected a number >= 0.01")
            out[setting] = value
        elif setting in ("target-utilization-percentage", "panic-window-percentage"):
            value = _float_setting(text, where, "a number 1..100")
            if not 1 <= value <= 100:
                _fail(where, f"got {_shown(text)}, expected a number 1..100")
            out[setting] = value
        elif setting == "panic-threshold-percentage":
            value = _float_setting(text, where, "a number 110..1000")
            if not 110 <= value <= 1000:
                _fail(where, f"got {_shown(text)}, expected a number 110..1000")
            out[setting] = value
        elif setting == "target-burst-capacity":
            value = _float_setting(text, where, "a number >= 0, or -1 for unlimited")
            if value < 0 and value != -1:
                _fail(where, f"got {_shown(text)}, expected a number >= 0, or -1 for unlimited")
            out[setting] = value
        elif setting == "window":
            seconds = parse_go_duration(text)
            expected = "a duration 6s..1h in whole seconds, such as 60s or 2m"
            if (
                seconds is None
                or not 6 <= seconds <= 3600
                or not math.isclose(seconds, round(seconds), abs_tol=1e-9)
            ):
                _fail(where, f"got {_shown(text)}, expected {expected}")
            out[setting] = float(round(seconds))
        else:
            out[setting] = _int_setting(text, where)

    min_scale, max_scale = int(out.get("min-scale", 0)), int(out.get("max-scale", 0))
    if max_scale and max_scale < min_scale:
        key = found["max-scale"][0]
        _fail(
            f"{path}[{key}]",
            f"got max-scale={max_scale} with min-scale={min_scale}, "
            "expected max-scale >= min-scale (or 0 for unlimited)",
        )
    if out.get("initial-scale") == 0 and not config.allow_zero_initial_scale:
        key, text = found["initial-scale"]
        _fail(
            f"{path}[{key}]",
            f"got {_shown(text)}, expected at least 1: zero initial scale is not allowed "
            "(config-autoscaler allow-zero-initial-scale; wakegate up --allow-zero-initial-scale)",
        )
    return out


# --- template ------------------------------------------------------------------------


def _probe_port(value: object, path: str, port: ContainerPort) -> int | str | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool):
        _fail(path, f"got {_shown(value)}, expected the container port")
    if isinstance(value, int):
        if value != port.container_port:
            _fail(path, f"got {value}, expected the container port {port.container_port}")
        return value
    if isinstance(value, str):
        if value != port.name or not value:
            _fail(path, f"got {_shown(value)}, expected the container port's name or number")
        return value
    _fail(path, f"got {_shown(value)}, expected the container port")


def _probe(value: object, path: str, port: ContainerPort) -> Probe:
    if value is None:
        return DEFAULT_PROBE
    obj = _object(
        value,
        path,
        (
            "httpGet",
            "tcpSocket",
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
        ),
    )
    if "httpGet" in obj and "tcpSocket" in obj:
        _fail(path, "expected only one of httpGet or tcpSocket")
    http_get = tcp_socket = None
    if "httpGet" in obj:
        where = f"{path}.httpGet"
        get = _object(obj["httpGet"], where, ("path", "port", "httpHeaders"))
        probe_path = _string(get.get("path") or "/", f"{where}.path")
        if not probe_path.startswith("/"):
            _fail(f"{where}.path", f"got {_shown(probe_path)}, expected a path starting with '/'")
        headers = []
        raw_headers = get.get("httpHeaders") or []
        for i, header in enumerate(_list(raw_headers, f"{where}.httpHeaders")):
            hpath = f"{where}.httpHeaders[{i}]"
            h = _object(header, hpath, ("name", "value"))
            name = _string(h.get("name"), f"{hpath}.name")
            if not HEADER_NAME.match(name):
                _fail(f"{hpath}.name", f"got {_shown(name)}, expected an HTTP header name")
            headers.append((name, _string(h.get("value", ""), f"{hpath}.value")))
        http_get = HTTPGetProbe(
            path=probe_path,
            port=_probe_port(get.get("port"), f"{where}.port", port),
            http_headers=tuple(headers),
        )
    elif "tcpSocket" in obj:
        where = f"{path}.tcpSocket"
        tcp = _object(obj["tcpSocket"] or {}, where, ("port",))
        tcp_socket = TCPSocketProbe(port=_probe_port(tcp.get("port"), f"{where}.port", port))
    else:
        tcp_socket = TCPSocketProbe()

    initial_delay = _integer(obj.get("initialDelaySeconds", 0), f"{path}.initialDelaySeconds", 0)
    period = _integer(obj.get("periodSeconds", 0), f"{path}.periodSeconds", 0)
    success = _integer(obj.get("successThreshold", 1), f"{path}.successThreshold", 1)
    if period == 0:
        for key in ("timeoutSeconds", "failureThreshold"):
            if obj.get(key):
                _fail(f"{path}.{key}", "not allowed when periodSeconds is 0 (aggressive probing)")
        timeout = failure = 0
    else:
        timeout = _integer(obj.get("timeoutSeconds", 1), f"{path}.timeoutSeconds", 1)
        failure = _integer(obj.get("failureThreshold", 3), f"{path}.failureThreshold", 1)
    return Probe(
        http_get=http_get,
        tcp_socket=tcp_socket,
        initial_delay_s=initial_delay,
        period_s=period,
        timeout_s=timeout,
        success_threshold=success,
        failure_threshold=failure,
    )


def _port(value: object, path: str) -> ContainerPort:
    if value is None or value == []:
        return ContainerPort()
    ports = _list(value, path)
    if len(ports) > 1:
        _fail(path, f"got {len(ports)} ports, expected exactly one container port")
    where = f"{path}[0]"
    obj = _object(ports[0], where, ("name", "containerPort", "protocol"))
    name = _string(obj.get("name", ""), f"{where}.name")
    if name not in _PORT_NAMES:
        _fail(f"{where}.name", f'got {_shown(name)}, expected "http1", "h2c" or no name')
    protocol = _string(obj.get("protocol", "TCP"), f"{where}.protocol")
    if protocol != "TCP":
        _fail(f"{where}.protocol", f'got {_shown(protocol)}, expected "TCP"')
    number = _integer(obj.get("containerPort", 0), f"{where}.containerPort", 0, 65535)
    if number in _RESERVED_PORTS:
        _fail(f"{where}.containerPort", f"got {number}, a port reserved by Knative; use another")
    return ContainerPort(container_port=number or DEFAULT_CONTAINER_PORT, name=name)


def _env(value: object, path: str) -> tuple[EnvVar, ...]:
    if value is None:
        return ()
    out = []
    for i, item in enumerate(_list(value, path)):
        where = f"{path}[{i}]"
        obj = _object(item, where, ("name", "value"))
        name = obj.get("name")
        if not name:
            _fail(f"{where}.name", "missing required field")
        name = _string(name, f"{where}.name")
        if not _ENV_NAME.match(name):
            _fail(f"{where}.name", f"got {_shown(name)}, expected letters, digits, '_', '-' or '.'")
        if name in _RESERVED_ENV:
            _fail(f"{where}.name", f"got {_shown(name)}, a reserved environment variable")
        value_text = obj.get("value", "")
        if not isinstance(value_text, str):
            _fail(
                f"{where}.value", f"got {_shown(value_text)}, expected a string (quote it in YAML)"
            )
        out.append(EnvVar(name, value_text))
    return tuple(out)


_CONTAINER_FIELDS = (
    "name",
    "image",
    "command",
    "args",
    "env",
    "ports",
    "readinessProbe",
    "workingDir",
)


def _container(value: object, path: str) -> Container:
    obj = _object(value, path, _CONTAINER_FIELDS)
    name = _string(obj.get("name") or DEFAULT_CONTAINER_NAME, f"{path}.name")
    if len(name) > _MAX_NAME or not _DNS1123_LABEL.match(name):
        _fail(f"{path}.name", f"got {_shown(name)}, expected a lowercase DNS label")
    if name == "queue-proxy":
        _fail(f"{path}.name", '"queue-proxy" is a reserved container name')
    image = _string(obj.get("image") or "", f"{path}.image")
    command = _strings(obj.get("command"), f"{path}.command")
    if not image and not command:
        _fail(f"{path}.image", "missing required field, expected an image (or a command to run)")
    port = _port(obj.get("ports"), f"{path}.ports")
    return Container(
        name=name,
        image=image,
        command=command,
        args=_strings(obj.get("args"), f"{path}.args"),
        env=_env(obj.get("env"), f"{path}.env"),
        port=port,
        readiness_probe=_probe(obj.get("readinessProbe"), f"{path}.readinessProbe", port),
        working_dir=_string(obj.get("workingDir") or "", f"{path}.workingDir"),
    )


def parse_template(
    value: object,
    service_name: str,
    path: str = "spec.template",
    config: ServingConfig | None = None,
) -> RevisionTemplate:
    """Validate and default a `spec.template` object of the Service named `service_name`."""
    config = config or SERVING_CONFIG
    if value is None:
        _fail(path, "missing required field")
    obj = _object(value, path, ("metadata", "spec"))
    meta = _object(
        obj.get("metadata") or {},
        f"{path}.metadata",
        ("name", "labels", "annotations", "creationTimestamp"),
    )
    name = _string(meta.get("name") or "", f"{path}.metadata.name")
    if name:
        if not _is_dns1035(name):
            _fail(
                f"{path}.metadata.name",
                f"got {_shown(name)}, expected a DNS-1035 label (lowercase letters, digits "
                "and '-', starting with a letter, at most 63 characters)",
            )
        if not name.startswith(f"{service_name}-"):
            _fail(
                f"{path}.metadata.name",
                f'got {_shown(name)}, expected the prefix "{service_name}-"',
            )
    labels = _string_map(meta.get("labels"), f"{path}.metadata.labels", label_values=True)
    annotations = _string_map(
        meta.get("annotations"), f"{path}.metadata.annotations", label_values=False
    )
    autoscaling_settings(annotations, f"{path}.metadata.annotations", config)

    spec_path = f"{path}.spec"
    if obj.get("spec") is None:
        _fail(spec_path, "missing required field")
    spec = _object(obj["spec"], spec_path, ("containers", "containerConcurrency", "timeoutSeconds"))
    raw = spec.get("containers")
    if raw is None or raw == []:
        _fail(f"{spec_path}.containers", "missing required field, expected exactly one container")
    containers = _list(raw, f"{spec_path}.containers")
    if len(containers) > 1:
        _fail(
            f"{spec_path}.containers",
            f"got {len(containers)} containers, "
            "expected exactly one (multi-container is not supported)",
        )
    container = _container(containers[0], f"{spec_path}.containers[0]")

    cc = spec.get("containerConcurrency")
    concurrency = (
        config.container_concurrency
        if cc is None
        else _integer(cc, f"{spec_path}.containerConcurrency", 0, config.container_concurrency_max)
    )
    ts = spec.get("timeoutSeconds")
    timeout = (
        0
        if ts is None
        else _integer(ts, f"{spec_path}.timeoutSeconds", 0, config.max_revision_timeout_s)
    )
    return RevisionTemplate(
        container=container,
        name=name,
        labels=labels,
        annotations=annotations,
        container_concurrency=concurrency,
        timeout_seconds=timeout or config.revision_timeout_s,
    )


# --- service -------------------------------------------------------------------------

_OBJECT_META_FIELDS = (
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
)
"""ObjectMeta keys accepted so `kubectl get -o yaml` output can be applied; only the
first four are kept."""


def _metadata(value: object) -> tuple[str, str, StringMap, StringMap]:
    if value is None:
        _fail("metadata", "missing required field")
    meta = _object(value, "metadata", _OBJECT_META_FIELDS)
    name = meta.get("name")
    if not name:
        _fail("metadata.name", "missing required field")
    name = _string(name, "metadata.name")
    if not _is_dns1035(name):
        _fail(
            "metadata.name",
            f"got {_shown(name)}, expected a DNS label (lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters)",
        )
    namespace = _string(meta.get("namespace") or "default", "metadata.namespace")
    if len(namespace) > _MAX_NAME or not _DNS1123_LABEL.match(namespace):
        _fail("metadata.namespace", f"got {_shown(namespace)}, expected a lowercase DNS label")
    labels = _string_map(meta.get("labels"), "metadata.labels", label_values=True)
    for key, label in labels.items():
        if key == VISIBILITY_LABEL:
            if label != CLUSTER_LOCAL:
                _fail(f"metadata.labels[{key}]", f'got {_shown(label)}, expected "{CLUSTER_LOCAL}"')
        elif key.startswith(_SERVING_PREFIX):
            _fail(f"metadata.labels[{key}]", f"the {_SERVING_PREFIX} label prefix is reserved")
    annotations = _string_map(meta.get("annotations"), "metadata.annotations", label_values=False)
    for key in annotations:
        if key.startswith(AUTOSCALING_PREFIX):
            _fail(
                f"metadata.annotations[{key}]",
                "autoscaling annotations belong under spec.template.metadata.annotations",
            )
    return namespace, name, labels, annotations


def _traffic(value: object, service_name: str) -> tuple[TrafficTarget, ...]:
    if value is None or value == []:
        return (TrafficTarget(percent=100, latest_revision=True),)
    targets: list[TrafficTarget] = []
    tags: dict[str, int] = {}
    for i, item in enumerate(_list(value, "spec.traffic")):
        where = f"spec.traffic[{i}]"
        obj = _object(item, where, ("revisionName", "latestRevision", "percent", "tag"))
        revision = _string(obj.get("revisionName") or "", f"{where}.revisionName")
        if revision and (len(revision) > _MAX_NAME or not _QUALIFIED_NAME.match(revision)):
            _fail(f"{where}.revisionName", f"got {_shown(revision)}, expected a revision name")
        raw_latest = obj.get("latestRevision")
        latest = (
            not revision if raw_latest is None else _boolean(raw_latest, f"{where}.latestRevision")
        )
        if latest == bool(revision):
            shown = "true" if latest else "false"
            _fail(
                f"{where}.latestRevision",
                f"got latestRevision {shown} with revisionName {_shown(revision)}, expected "
                "exactly one of revisionName or latestRevision: true",
            )
        percent = _integer(obj.get("percent", 0), f"{where}.percent", 0, 100)
        tag = _string(obj.get("tag") or "", f"{where}.tag")
        if tag:
            if not _is_dns1035(tag):
                _fail(
                    f"{where}.tag",
                    f"got {_shown(tag)}, expected a DNS-1035 label (lowercase letters, digits "
                    "and '-', starting with a letter)",
                )
            if len(f"{tag}-{service_name}") > _MAX_NAME:
                _fail(
                    f"{where}.tag",
                    f'got {_shown(tag)}, but host label "{tag}-{service_name}" is longer than 63 '
                    "characters",
                )
            if tag in tags:
                _fail(
                    f"{where}.tag",
                    f"duplicate tag {_shown(tag)}, also in spec.traffic[{tags[tag]}]",
                )
            tags[tag] = i
        targets.append(TrafficTarget(percent, revision, latest, tag))
    total = sum(t.percent for t in targets)
    if total != 100:
        _fail("spec.traffic", f"percents sum to {total}, expected 100")
    return tuple(targets)


def parse_service(obj: Mapping[str, Any], config: ServingConfig | None = None) -> Service:
    """Validate and default one Service object (a dict)."""
    if not isinstance(obj, Mapping):
        _fail("", f"got {_shown(obj)}, expected a Service object")
    if obj.get("apiVersion") != API_VERSION:
        _fail("apiVersion", f"got {_shown(obj.get('apiVersion'))}, expected {_shown(API_VERSION)}")
    if obj.get("kind") != KIND:
        _fail("kind", f"got {_shown(obj.get('kind'))}, expected {_shown(KIND)}")
    obj = _object(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    namespace, name, labels, annotations = _metadata(obj.get("metadata"))
    if obj.get("spec") is None:
        _fail("spec", "missing required field")
    spec = _object(obj["spec"], "spec", ("template", "traffic"))
    template = parse_template(spec.get("template"), name, "spec.template", config)
    return Service(
        namespace=namespace,
        name=name,
        template=template,
        traffic=_traffic(spec.get("traffic"), name),
        labels=labels,
        annotations=annotations,
    )


def require_local_command(service: Service) -> None:
    """Raise unless the container has a `command`: local pods are processes, not images."""
    container = service.template.container
    if not container.command:
        image = f" {_shown(container.image)}" if container.image else ""
        _fail(
            "spec.template.spec.containers[0].command",
            f"missing; the local runtime runs commands, not images: give the command "
            f"(and args) that start the app instead of only the image{image}",
        )


def _yaml_documents(text: str) -> list[tuple[int, object]]:
    """(index, document) for each non-empty YAML document; syntax errors name the index."""
    documents: list[tuple[int, object]] = []
    loader = yaml.safe_load_all(text)
    index = 0
    while True:
        try:
            document = next(loader)
        except StopIteration:
            return documents
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ServiceError(f"document {index}: malformed YAML{where}: {problem}") from None
        if document is not None:
            documents.append((index, document))
        index += 1


def load_services(text: str, config: ServingConfig | None = None) -> list[Service]:
    """Parse every Service in a multi-document YAML (or JSON) text, all or nothing.

    Empty documents are skipped and a `kind: List` contributes its `items`. Errors
    name the zero-based document index; a Service given twice is an error.
    """
    services: list[Service] = []
    seen: dict[str, str] = {}

    def add(where: str, document: object) -> None:
        try:
            service = parse_service(document, config)  # type: ignore[arg-type]
        except ServiceError as err:
            raise ServiceError(f"{where}: {err}") from None
        if service.key in seen:
            raise ServiceError(
                f"{where}: metadata.name: Service {service.key} "
                f"is also defined in {seen[service.key]}"
            )
        seen[service.key] = where
        services.append(service)

    for index, document in _yaml_documents(text):
        where = f"document {index}"
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ServiceError(f"{where}: items: got {_shown(items)}, expected a list")
            for item_index, item in enumerate(items):
                add(f"{where}: items[{item_index}]", item)
        else:
            add(where, document)
    return services


# --- back to Knative's JSON shape ----------------------------------------------------


def _probe_to_dict(probe: Probe) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if probe.http_get is not None:
        get: dict[str, Any] = {"path": probe.http_get.path}
        if probe.http_get.port is not None:
            get["port"] = probe.http_get.port
        if probe.http_get.http_headers:
            get["httpHeaders"] = [{"name": n, "value": v} for n, v in probe.http_get.http_headers]
        out["httpGet"] = get
    elif probe.tcp_socket is not None:
        port = probe.tcp_socket.port
        out["tcpSocket"] = {} if port is None else {"port": port}
    if probe.initial_delay_s:
        out["initialDelaySeconds"] = probe.initial_delay_s
    if probe.period_s:
        out["periodSeconds"] = probe.period_s
        out["timeoutSeconds"] = probe.timeout_s
        out["failureThreshold"] = probe.failure_threshold
    out["successThreshold"] = probe.success_threshold
    return out


def template_to_dict(template: RevisionTemplate) -> dict[str, Any]:
    """The defaulted template as a `spec.template` object; `parse_template` reads it back."""
    c = template.container
    container: dict[str, Any] = {"name": c.name}
    if c.image:
        container["image"] = c.image
    if c.command:
        container["command"] = list(c.command)
    if c.args:
        container["args"] = list(c.args)
    if c.env:
        container["env"] = [{"name": e.name, "value": e.value} for e in c.env]
    port: dict[str, Any] = {"containerPort": c.port.container_port}
    if c.port.name:
        port["name"] = c.port.name
    container["ports"] = [port]
    container["readinessProbe"] = _probe_to_dict(c.readiness_probe)
    if c.working_dir:
        container["workingDir"] = c.working_dir
    metadata: dict[str, Any] = {}
    if template.name:
        metadata["name"] = template.name
    if template.labels:
        metadata["labels"] = dict(template.labels)
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    return {
        "metadata": metadata,
        "spec": {
            "containers": [container],
            "containerConcurrency": template.container_concurrency,
            "timeoutSeconds": template.timeout_seconds,
        },
    }


def service_to_dict(service: Service) -> dict[str, Any]:
    """The defaulted Service as a manifest; `parse_service` reads it back unchanged."""
    metadata: dict[str, Any] = {"name": service.name, "namespace": service.namespace}
    if service.labels:
        metadata["labels"] = dict(service.labels)
    if service.annotations:
        metadata["annotations"] = dict(service.annotations)
    traffic = []
    for target in service.traffic:
        item: dict[str, Any] = {"latestRevision": target.latest_revision, "percent": target.percent}
        if target.revision_name:
            item["revisionName"] = target.revision_name
        if target.tag:
            item["tag"] = target.tag
        traffic.append(item)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {"template": template_to_dict(service.template), "traffic": traffic},
    }
