"""Knative `serving.knative.dev/v1` types: Service, its revision template, traffic.

Values are frozen and defaulted (see `wakegate.serving.validation`), so two manifests
that mean the same thing give equal models and equal templates mean no new Revision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

API_VERSION = "serving.knative.dev/v1"
KIND = "Service"

VISIBILITY_LABEL = "networking.knative.dev/visibility"
CLUSTER_LOCAL = "cluster-local"
DEFAULT_CONTAINER_NAME = "user-container"
DEFAULT_CONTAINER_PORT = 8080
SERVICE_PORT = 80
"""The port of a revision's (Kubernetes) service, which the activator also listens on."""
_MAX_NAME = 63


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


def child_name(parent: str, suffix: str) -> str:
    """`parent + suffix`, shortened with a hash of `parent` to fit a 63-character name."""
    if len(parent) + len(suffix) <= _MAX_NAME:
        return parent + suffix
    digest = hashlib.md5(parent.encode(), usedforsecurity=False).hexdigest()
    return parent[: _MAX_NAME - len(digest) - len(suffix)] + digest + suffix
